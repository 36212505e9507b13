"""STISRSystem: a generator, named recognizers and a loss mix; the shared train / validation / test logic.

Papers subclass it and override only the hook that differs:
- `forward_train(batch) -> outputs` (what the loss terms read; must contain "sr"),
- `super_resolve(lr, batch) -> sr` (inference path used by validation, test and `stisr-sr`).
The test harness (`metrics.evaluation`), the recognizers' and compile set-up (`systems.assembly`), the optimizer
(`systems.optim`), checkpoint trimming (`systems.checkpointing`) and what the benchmark calls (`systems.bench_hooks`)
live beside it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from stisr_lightning.losses.mix import LossMix
from stisr_lightning.metrics.evaluation import TestHarness, TestReport, image_metrics, timed
from stisr_lightning.metrics.recognition import WordAccuracy
from stisr_lightning.models.recognizers.base import Recognizer
from stisr_lightning.systems.assembly import attach_recognizers, compile_in_place, compile_target
from stisr_lightning.systems.bench_hooks import BenchHooks
from stisr_lightning.systems.checkpointing import LeanCheckpoints
from stisr_lightning.systems.optim import configure
from stisr_lightning.weights import load_weights


class STISRSystem(BenchHooks, LeanCheckpoints):
    legacy_optimizer = "torch.optim.Adam"  # what runs saved with `lr` / `betas` keys trained with (systems.optim)
    training_recognizer_args = ("fine_tune_recognizers",)  # arguments naming the recognizers a training step reads

    def __init__(
        self,
        generator: nn.Module,
        loss: LossMix | None = None,
        generator_weights: str | None = None,
        recognizers: dict[str, Recognizer] | None = None,
        fine_tune_recognizers: list[str] | None = None,
        recognizer_weights: dict[str, str] | None = None,
        val_recognizer: str | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        recognizer_lr: float = 1e-4,
        generator_group_lrs: dict[str, float] | None = None,
        psnr_batch_averaged: bool = False,
        subset_average: Literal["weighted", "mean"] = "weighted",
        lpips_net: str | None = None,
        fid_recognizer: str | None = None,
        inception_fid: bool = False,
        sample_count: int = 8,
        compile_targets: list[str] | None = None,
        compile_mode: str = "default",
    ):
        """
        Args:
            generator: the SR network, `generator(lr) -> sr`.
            loss: the training loss; None for systems that are only evaluated (bicubic).
            generator_weights: a file the generator starts from (an official release, e.g. CAR's EDSR `usn.pth`
                that the EDSR + CDistNet paper fine-tunes, or a suite checkpoint).
            recognizers: named recognizers, evaluated on every test set; frozen unless named in
                `fine_tune_recognizers`.
            recognizer_weights: name -> weights file (an official release such as `crnn.pth`, `moran.pth`,
                `demo.pth.tar`, or one trained by the suite's recognizer recipes), loaded before freezing.
            val_recognizer: the recognizer whose accuracy is tracked on the validation split (model selection).
            optimizer, lr_scheduler: called with the parameter groups / the optimizer (`systems.optim`); the
                TextZoom-family recipes: Adam(lr 1e-3, betas (0.5, 0.999)), StepLR halving once at epoch 400.
            lr_scheduler_interval: whether the schedule steps per epoch or per optimizer step.
            recognizer_lr: the learning rate of the fine-tuned recognizers' parameter group.
            generator_group_lrs: learning rates for named generator submodules, the rest of the generator using the
                optimizer's (LEMMA fine-tunes its ABINet prior at 1e-4: `{position_prior: 1.0e-4}`).
            psnr_batch_averaged: reproduce the official per-batch PSNR/SSIM averaging instead of per image.
            subset_average: how `<dataset>/average` combines the subsets: weighted by their sizes (TextZoom's
                protocol) or their plain mean (the EDSR + CDistNet paper's "Avg.": (80.48 + 64.99 + 50.63) / 3).
            lpips_net: also report LPIPS with this backbone ('vgg' as LEMMA, 'alex'); needs the ImageNet backbone in
                the torch hub cache, and reports "not available" (NaN) without it.
            fid_recognizer: also report `fid_text`, the Frechet distance between SR and HR in this (differentiable)
                recognizer's feature space; not comparable to Inception FID.
            inception_fid: also report `fid`, Inception FID between SR and HR (TextResShift's FID); needs
                torchvision's Inception-v3 weights in the torch hub cache, and reports "not available" (NaN) without.
            sample_count: images per test set kept for the LR | SR | HR sample table.
            compile_targets: submodules or methods to `torch.compile` in place: `generator` compiles the generator's
                `__call__`; `generator.forward_with_prior` compiles that method (systems that call a method rather
                than the module, as LEMMA and TATT do). Small STISR networks are bound by kernel launches on a GPU,
                which compilation (and CUDA graphs) attacks.
            compile_mode: `torch.compile` mode: default, reduce-overhead (CUDA graphs), max-autotune.
        """
        super().__init__()
        self.generator = generator
        if generator_weights is not None:
            load_weights(generator, generator_weights)
        self.loss = loss
        self.fine_tune_recognizers = list(fine_tune_recognizers or [])
        self.recognizers = attach_recognizers(recognizers, recognizer_weights, self.fine_tune_recognizers,
                                              [name for name in (val_recognizer, fid_recognizer) if name])
        self.val_recognizer = val_recognizer
        self.checkpoint_monitor = "val/acc" if val_recognizer else "val/psnr"
        self.optimizer, self.lr_scheduler, self.lr_scheduler_interval = optimizer, lr_scheduler, lr_scheduler_interval
        self.recognizer_lr = recognizer_lr
        self.generator_group_lrs = dict(generator_group_lrs or {})
        for name in self.generator_group_lrs:
            try:
                generator.get_submodule(name)
            except AttributeError:
                raise ValueError(f"generator_group_lrs: {type(generator).__name__} has no submodule {name!r}") from None
        if subset_average not in ("weighted", "mean"):
            raise ValueError(f"subset_average must be 'weighted' or 'mean', got {subset_average!r}")
        self.harness_args = dict(batch_averaged=psnr_batch_averaged, lpips_net=lpips_net, fid_recognizer=fid_recognizer,
                                 sample_count=sample_count, subset_average=subset_average, inception_fid=inception_fid)
        self.compile_targets, self.compile_mode = list(compile_targets or []), compile_mode
        for target in self.compile_targets:
            compile_target(self, target)  # validates the names now, before any training
        self._compiled = False
        self.val_metrics = image_metrics(psnr_batch_averaged)
        self.val_accuracy = WordAccuracy()
        self.test_harness: TestHarness | None = None
        self.test_report: TestReport | None = None

    # ----------------------------------------------------------------------------------------------- hooks
    def forward_train(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"sr": self.generator(batch["lr"])}

    def super_resolve(self, lr: Tensor, batch: dict[str, Any] | None = None) -> Tensor:
        return self.generator(lr)

    def forward(self, lr: Tensor) -> Tensor:
        return self.super_resolve(lr)

    def configure_model(self) -> None:
        """Compiles `compile_targets` once, in place, before any stage runs (Lightning calls this hook)."""
        if not self._compiled:
            compile_in_place(self, self.compile_targets, self.compile_mode)
            self._compiled = True

    # ----------------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.loss is None:
            raise RuntimeError(f"{type(self).__name__} has no loss configured; it can be evaluated but not trained")
        total, terms = self.loss(self.forward_train(batch), batch)
        size = batch["lr"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=size)
        self.log_dict({f"train/loss/{name}": value for name, value in terms.items()}, batch_size=size)
        return total

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The generator's trainable parameters (first, at the optimizer's lr), each of `generator_group_lrs` at its
        own lr, and the fine-tuned recognizers at `recognizer_lr`."""
        named = [[p for p in self.generator.get_submodule(name).parameters() if p.requires_grad]
                 for name in self.generator_group_lrs]
        taken = {id(p) for params in named for p in params}
        groups = [{"params": [p for p in self.generator.parameters() if p.requires_grad and id(p) not in taken]}]
        groups += [{"params": params, "lr": lr} for params, lr in zip(named, self.generator_group_lrs.values())]
        return groups + [{"params": list(self.recognizers[name].parameters()), "lr": self.recognizer_lr}
                         for name in self.fine_tune_recognizers]

    def configure_optimizers(self):
        groups = self.parameter_groups()
        if not any(group["params"] for group in groups):
            raise RuntimeError(f"{type(self.generator).__name__} has no trainable parameters; evaluate it instead")
        return configure(self.optimizer, groups, self.lr_scheduler, self.lr_scheduler_interval)

    # ----------------------------------------------------------------------------------------------- validation
    def full_precision(self) -> torch.autocast:
        """Validation and test compute in fp32 whatever precision training uses, so that every reported number
        means the same on every machine (and model selection is not made on bf16-rounded images)."""
        return torch.autocast(self.device.type, enabled=False)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        with self.full_precision():
            sr = self.super_resolve(batch["lr"], batch)
            self.val_metrics.update(sr, batch["hr"])
            if self.val_recognizer:
                readings = self.recognizers[self.val_recognizer].read(sr[:, :3].clamp(0, 1))
                self.val_accuracy.update(readings, batch["label"])

    def on_validation_epoch_end(self) -> None:
        values = {f"val/{name}": value for name, value in self.val_metrics.compute().items()}
        if self.val_recognizer:
            values["val/acc"] = self.val_accuracy.compute()
            self.val_accuracy.reset()
        self.log_dict(values, prog_bar=True)
        self.val_metrics.reset()

    # ----------------------------------------------------------------------------------------------- test
    def setup(self, stage: str) -> None:
        if stage == "test":
            datamodule = self.trainer.datamodule
            self.test_harness = TestHarness(list(getattr(datamodule, "test_set_names", [])), dict(self.recognizers),
                                            text_filter=getattr(datamodule, "compare_filter", "lower"),
                                            **self.harness_args).to(self.device)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """SR is timed alone (recognizers and metrics excluded): what TextDiff's Table 5 reports."""
        with self.full_precision():
            sr, seconds = timed(self.super_resolve, batch["lr"], batch)
            self.test_harness.update(self.test_harness.set_names[dataloader_idx], batch, sr, seconds,
                                     keep_samples=self.global_rank == 0)

    def on_test_epoch_end(self) -> None:
        self.test_report = self.test_harness.report(self.run_metrics())
        # Logged straight to the loggers: values are already reduced over ranks and are not per dataloader.
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(self.test_report.results, step=self.global_step)

    def run_metrics(self) -> dict[str, float]:
        """Numbers that describe the tested model rather than a test set (a quantized pipeline's theoretical size);
        every test set reports them, so tables read them like any other metric."""
        return {}
