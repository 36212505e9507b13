"""STISRSystem: a generator, named recognizers and a loss mix; the shared train / validation / test logic.

Papers subclass it and override only the hook that differs:
- `forward_train(batch) -> outputs` (what the loss terms read; must contain "sr"),
- `super_resolve(lr, batch) -> sr` (inference path used by validation, test and `stisr-sr`).
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from stisr_lightning.losses.mix import LossMix
from stisr_lightning.metrics.evaluation import TestHarness, TestReport, image_metrics
from stisr_lightning.metrics.recognition import WordAccuracy
from stisr_lightning.models.recognizers.base import Recognizer
from stisr_lightning.weights import load_weights, report_untrained


class STISRSystem(LightningModule):
    def __init__(
        self,
        generator: nn.Module,
        loss: LossMix | None = None,
        generator_weights: str | None = None,
        recognizers: dict[str, Recognizer] | None = None,
        fine_tune_recognizers: list[str] | None = None,
        recognizer_weights: dict[str, str] | None = None,
        val_recognizer: str | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.5, 0.999),
        weight_decay: float = 0.0,
        recognizer_lr: float = 1e-4,
        generator_group_lrs: dict[str, float] | None = None,
        lr_decay_epochs: int | None = None,
        lr_decay_gamma: float = 0.5,
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
            generator_group_lrs: learning rates for named generator submodules, the rest of the generator using
                `lr` (LEMMA fine-tunes its ABINet prior at 1e-4: `{position_prior: 1.0e-4}`).
            lr_decay_epochs: StepLR period in epochs (the TextZoom-family recipes halve once at epoch 400).
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
                than the module, as LEMMA and TATT do). State-dict keys and checkpoints are unchanged. Small STISR
                networks are bound by kernel launches on a GPU, which compilation (and CUDA graphs) attacks.
            compile_mode: `torch.compile` mode: default, reduce-overhead (CUDA graphs), max-autotune.
        """
        super().__init__()
        self.generator = generator
        if generator_weights is not None:
            load_weights(generator, generator_weights)
        self.loss = loss
        self.recognizers = nn.ModuleDict(recognizers or {})
        self.fine_tune_recognizers = list(fine_tune_recognizers or [])
        recognizer_weights = dict(recognizer_weights or {})
        named = self.fine_tune_recognizers + list(recognizer_weights) + [n for n in (val_recognizer, fid_recognizer) if n]
        for name in named:
            if name not in self.recognizers:
                raise ValueError(f"recognizer {name!r} is not configured (recognizers: {sorted(self.recognizers)})")
        for name, path in recognizer_weights.items():
            load_weights(self.recognizers[name], path, lightning_prefix="recognizer.")
        for name, recognizer in self.recognizers.items():
            if not (recognizer.ships_weights or name in recognizer_weights or name in self.fine_tune_recognizers):
                report_untrained(f"recognizer {name!r} ({type(recognizer).__name__}) has no recognizer_weights, so it "
                                 "reads with random weights; give the official file or one from the suite's recipes")
        for name, recognizer in self.recognizers.items():
            if name not in self.fine_tune_recognizers:
                recognizer.freeze()
        self.val_recognizer = val_recognizer
        self.checkpoint_monitor = "val/acc" if val_recognizer else "val/psnr"
        self.lr, self.betas, self.weight_decay = lr, tuple(betas), weight_decay
        self.recognizer_lr = recognizer_lr
        self.generator_group_lrs = dict(generator_group_lrs or {})
        for name in self.generator_group_lrs:
            try:
                generator.get_submodule(name)
            except AttributeError:
                raise ValueError(f"generator_group_lrs: {type(generator).__name__} has no submodule {name!r}") from None
        self.lr_decay_epochs, self.lr_decay_gamma = lr_decay_epochs, lr_decay_gamma
        self.psnr_batch_averaged = psnr_batch_averaged
        if subset_average not in ("weighted", "mean"):
            raise ValueError(f"subset_average must be 'weighted' or 'mean', got {subset_average!r}")
        self.subset_average = subset_average
        self.lpips_net = lpips_net
        self.fid_recognizer = fid_recognizer
        self.inception_fid = inception_fid
        self.sample_count = sample_count
        self.compile_targets, self.compile_mode = list(compile_targets or []), compile_mode
        for target in self.compile_targets:
            self._compile_target(target)  # validates the names now, before any training
        self._compiled = False
        self.val_metrics = image_metrics(self.psnr_batch_averaged)
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

    def _compile_target(self, target: str) -> tuple[nn.Module, str | None]:
        """(module, None) for a submodule name, (owner, method) for `submodule.method`; a one-line error otherwise."""
        try:
            return self.get_submodule(target), None
        except AttributeError:
            pass
        owner_name, _, method = target.rpartition(".")
        try:
            owner = self.get_submodule(owner_name)
        except AttributeError:
            owner = None
        if owner is None or not callable(getattr(owner, method, None)):
            raise ValueError(f"compile_targets: {type(self).__name__} has no submodule or method {target!r}")
        return owner, method

    def configure_model(self) -> None:
        """Compiles `compile_targets` once, in place, before any stage runs (Lightning calls this hook)."""
        if self._compiled:
            return
        for target in self.compile_targets:
            module, method = self._compile_target(target)
            if method is None:
                module.compile(mode=self.compile_mode)
            else:
                setattr(module, method, torch.compile(getattr(module, method), mode=self.compile_mode))
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

    def manual_update(self, batch: dict[str, Any], optimizers: list[torch.optim.Optimizer],
                      gradient_clip_val: float | None) -> None:
        """One training update by hand, as the Trainer runs it (`stisr-bench train` times it outside Lightning)."""
        (optimizer,) = optimizers
        optimizer.zero_grad(set_to_none=True)
        total, _ = self.loss(self.forward_train(batch), batch)
        total.backward()
        if gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
        optimizer.step()

    def step_parts(self, batch: dict[str, Any]) -> dict[str, Callable[[], None]]:
        """Parts of a training step that `stisr-bench train` times alone, to report their share of the step: the
        generator's own (its `step_parts`, e.g. a text prior) and each loss term that runs a recognizer."""
        parts = dict(self.generator.step_parts(batch["lr"])) if hasattr(self.generator, "step_parts") else {}
        terms = {name: term for name, term in self.loss.terms.items()
                 if getattr(term, "recognizer", None) is not None and self.loss.weights[name] != 0}
        if terms:  # one forward for all of them; each term's backward stops at these detached outputs
            outputs = {key: value.detach().requires_grad_(value.is_floating_point()) if torch.is_tensor(value) else value
                       for key, value in self.forward_train(batch).items()}
            for name, term in terms.items():
                parts[f"{name} loss"] = lambda term=term: term(outputs, batch).backward()
        return parts

    def configure_optimizers(self):
        grouped: set[int] = set()
        groups = []
        for name, lr in self.generator_group_lrs.items():
            params = [p for p in self.generator.get_submodule(name).parameters() if p.requires_grad]
            grouped.update(id(p) for p in params)
            groups.append({"params": params, "lr": lr})
        rest = [p for p in self.generator.parameters() if p.requires_grad and id(p) not in grouped]
        groups.insert(0, {"params": rest, "lr": self.lr})
        for name in self.fine_tune_recognizers:
            groups.append({"params": list(self.recognizers[name].parameters()), "lr": self.recognizer_lr})
        groups = [group for group in groups if group["params"]]
        if not groups:
            raise RuntimeError(f"{type(self.generator).__name__} has no trainable parameters; evaluate it instead")
        optimizer = torch.optim.Adam(groups, betas=self.betas, weight_decay=self.weight_decay)
        if self.lr_decay_epochs is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, self.lr_decay_epochs, gamma=self.lr_decay_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ----------------------------------------------------------------------------------------------- validation
    def full_precision(self) -> torch.autocast:
        """Validation and test compute in fp32 whatever precision training uses, so that every reported number
        means the same on every machine (and model selection is not made on bf16-rounded images)."""
        return torch.autocast(self.device.type, enabled=False)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        with self.full_precision():
            self._validate(batch)

    def _validate(self, batch: dict[str, Any]) -> None:
        sr = self.super_resolve(batch["lr"], batch)
        self.val_metrics.update(sr, batch["hr"])
        if self.val_recognizer:
            self.val_accuracy.update(self.recognizers[self.val_recognizer].read(sr[:, :3].clamp(0, 1)), batch["label"])

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
            self.test_harness = TestHarness(
                list(getattr(datamodule, "test_set_names", [])), dict(self.recognizers),
                self.psnr_batch_averaged, self.lpips_net, self.fid_recognizer, self.sample_count, self.subset_average,
                getattr(datamodule, "compare_filter", "lower"), inception_fid=self.inception_fid,
            ).to(self.device)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        with self.full_precision():
            sr, seconds = self._timed_super_resolve(batch)
            self.test_harness.update(self.test_harness.set_names[dataloader_idx], batch, sr, seconds,
                                     keep_samples=self.global_rank == 0)

    def _timed_super_resolve(self, batch: dict[str, Any]) -> tuple[Tensor, float]:
        """SR and its wall time alone (recognizers and metrics excluded): what TextDiff's Table 5 reports. The GPU is
        synchronized around it, once per test batch."""
        synchronize = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        synchronize()
        start = perf_counter()
        sr = self.super_resolve(batch["lr"], batch)
        synchronize()
        return sr, perf_counter() - start

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

    # ----------------------------------------------------------------------------------------------- checkpoints
    def _frozen_prefixes(self) -> tuple[str, ...]:
        """Every module marked `frozen`: recognizers (evaluators, and those held by loss terms: text-focus, L_joint)
        and a generator's fixed parts built from official files (TextResShift's autoencoder and MoM)."""
        return tuple(f"{name}." for name, module in self.named_modules() if getattr(module, "frozen", False) is True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Frozen modules come from packages or official files; keeping them out makes checkpoints small."""
        prefixes = self._frozen_prefixes()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(prefixes)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Frozen modules are restored from the system itself; the step of the loaded weights is kept for
        results.json (a test after fit runs on the best checkpoint, not on the last step)."""
        self.loaded_checkpoint_step = checkpoint.get("global_step")
        prefixes = self._frozen_prefixes()
        own = {k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}
        checkpoint["state_dict"] = {**own, **checkpoint["state_dict"]}
