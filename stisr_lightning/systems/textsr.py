"""TextSR (Wang, Xie et al., arXiv 1909.07113) as a system: an SRGAN trained with ASTER's recognition loss on the SR
image as a Text Perceptual Loss (TPL).

Each step updates the discriminator on HR (real) and detached SR (fake) images, then the generator (on the same SR
images, judged by the updated discriminator) with the loss mix of experiments/textsr.yaml: content + adversarial +
TPL, all weighted 1 (Sec. 4.2). The TPL recognizer is one of the
system's `recognizers` (ASTER, which the paper also evaluates with); `tpl_scheme` picks one of the paper's three
ways to supervise the generator (Sec. 3.3):
- `frozen` (the one the paper reports): ASTER trained first (`recognizer_weights`), then frozen;
- `pretrain_joint`: ASTER trained first, then trained on with the generator, end to end;
- `joint_scratch`: ASTER and generator trained together from random initialization (no weights allowed).
In the joint schemes the TPL's gradient reaches ASTER's weights, at `recognizer_lr`.

The SRGAN row of the paper's tables is this system without the TPL (experiments/srgan.yaml).

Several GPUs: each iteration leaves one network without gradients in each backward pass, so DDP needs
`--trainer.strategy=ddp_find_unused_parameters_true`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stisr_lightning.systems.base import STISRSystem
from stisr_lightning.weights import report_untrained

TPL_SCHEMES = ("frozen", "pretrain_joint", "joint_scratch")


class TextSRSystem(STISRSystem):
    training_recognizer_args = ("fine_tune_recognizers", "tpl_recognizer")
    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        tpl_recognizer: str | None = "aster",
        tpl_scheme: Literal["frozen", "pretrain_joint", "joint_scratch"] = "frozen",
        **kwargs: Any,
    ):
        """
        Args:
            discriminator: SRGAN's discriminator, `discriminator(images) -> (N,) logits`.
            tpl_recognizer: the recognizer (a key of `recognizers`) whose teacher-forced loss on the SR image is the
                TPL: an attention recognizer with `encode_text` and `forward(images, targets)` (ASTER). None for SRGAN.
            tpl_scheme: frozen | pretrain_joint | joint_scratch (above).
            kwargs: everything else of `STISRSystem`. `optimizer` builds one optimizer for the generator (with the
                fine-tuned recognizers) and one for the discriminator; `lr_scheduler` one schedule for each, stepped
                every iteration (the paper: x0.1 at 30k and 40k, `torch.optim.lr_scheduler.MultiStepLR`). The paper's
                "Adam with momentum 0.9" is `torch.optim.Adam` with betas [0.9, 0.999]; its learning rate of 1.0
                decayed to 0.1 and 0.01 is Adadelta's scale (aster.pytorch, which TextSR builds on) and diverges
                with Adam: `torch.optim.Adadelta` with lr 1.0 runs it as printed.
        """
        if tpl_scheme not in TPL_SCHEMES:
            raise ValueError(f"TextSRSystem.tpl_scheme: expected one of {TPL_SCHEMES}, got {tpl_scheme!r}")
        fine_tune = list(kwargs.pop("fine_tune_recognizers", None) or [])
        if tpl_recognizer is not None:
            weights = kwargs.get("recognizer_weights") or {}
            if tpl_scheme == "joint_scratch" and tpl_recognizer in weights:
                raise ValueError(f"TextSRSystem: tpl_scheme 'joint_scratch' trains {tpl_recognizer!r} from random "
                                 f"initialization, but recognizer_weights.{tpl_recognizer} is set")
            if tpl_scheme != "frozen" and tpl_recognizer not in fine_tune:
                fine_tune.append(tpl_recognizer)
            if tpl_scheme != "joint_scratch" and tpl_recognizer not in weights:
                report_untrained(f"TextSRSystem: tpl_scheme {tpl_scheme!r} expects a trained {tpl_recognizer!r} "
                                 f"(recognizer_weights.{tpl_recognizer}); the TPL now follows a random recognizer")
        super().__init__(generator, fine_tune_recognizers=fine_tune, **kwargs)
        if tpl_recognizer is not None:
            recognizer = self.recognizers[tpl_recognizer] if tpl_recognizer in self.recognizers else None
            if recognizer is None or not callable(getattr(recognizer, "encode_text", None)):
                raise ValueError(f"TextSRSystem.tpl_recognizer: {tpl_recognizer!r} must name a configured attention "
                                 f"recognizer with encode_text (recognizers: {sorted(self.recognizers)})")
        self.discriminator = discriminator
        self.tpl_recognizer = tpl_recognizer
        self.tpl_scheme = tpl_scheme
        self.automatic_optimization = False

    def forward_train(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.generator_outputs(self.generator(batch["lr"]), batch)

    def generator_outputs(self, sr: Tensor, batch: dict[str, Any]) -> dict[str, Any]:
        """What the generator's loss terms read; the discriminator and the TPL recognizer see the RGB channels."""
        outputs: dict[str, Any] = {"sr": sr, "fake_logits": self.discriminator(sr[:, :3])}
        if self.tpl_recognizer is not None:
            recognizer = self.recognizers[self.tpl_recognizer]
            targets, lengths = recognizer.encode_text(list(batch["label"]))
            targets = targets.to(sr.device)
            outputs.update(tpl_logits=recognizer(sr[:, :3], targets).logits, tpl_targets=targets, tpl_lengths=lengths)
        return outputs

    def discriminator_loss(self, hr: Tensor, sr: Tensor) -> Tensor:
        """-log D(HR) - log(1 - D(SR)) with SR detached (Eq. 2, the discriminator's side)."""
        real, fake = self.discriminator(hr[:, :3]), self.discriminator(sr.detach()[:, :3])
        return F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + \
            F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))

    def iteration(self, batch: dict[str, Any], generator_step: Callable[[], None],
                  discriminator_step: Callable[[], None], backward: Callable[[Tensor], None]) -> tuple[Tensor, ...]:
        """One TextSR iteration: the discriminator's update, then the generator's, on the same SR images.
        Returns (generator loss, discriminator loss, generator terms); `stisr-bench` times it outside Lightning."""
        sr = self.generator(batch["lr"])
        d_loss = self.discriminator_loss(batch["hr"], sr)
        backward(d_loss)
        discriminator_step()
        self.discriminator.requires_grad_(False)  # the generator's step leaves the discriminator's gradients alone
        try:
            total, terms = self.loss(self.generator_outputs(sr, batch), batch)
            backward(total)
            generator_step()
        finally:
            self.discriminator.requires_grad_(True)
        return total, d_loss, terms

    def manual_update(self, batch: dict[str, Any], optimizers: list[torch.optim.Optimizer],
                      gradient_clip_val: float | None) -> None:
        """The GAN iteration by hand: the discriminator's update, then the generator's (no clipping, as in training)."""
        generator_opt, discriminator_opt = optimizers
        generator_opt.zero_grad(set_to_none=True)
        discriminator_opt.zero_grad(set_to_none=True)
        self.iteration(batch, generator_opt.step, discriminator_opt.step, Tensor.backward)

    def step_parts(self, batch: dict[str, Any]) -> dict[str, Callable[[], None]]:
        parts = super().step_parts(batch)
        if self.tpl_recognizer:
            recognizer = self.recognizers[self.tpl_recognizer]
            targets = recognizer.encode_text(batch["label"])[0].to(batch["hr"].device)
            sr = batch["hr"][:, :3].detach().requires_grad_()
            parts[f"TPL ({self.tpl_recognizer})"] = \
                lambda: recognizer(sr, targets).logits.float().logsumexp(-1).sum().backward()
        return parts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.loss is None:
            raise RuntimeError("TextSRSystem has no loss configured; it can be evaluated but not trained")
        generator_opt, discriminator_opt = self.optimizers()
        generator_opt.zero_grad()
        discriminator_opt.zero_grad()

        def discriminator_step() -> None:
            # The bare optimizer's step: Lightning counts every wrapped optimizer step in `global_step`, and
            # `max_steps` and the schedule's milestones should count iterations, as the paper's 50k do.
            discriminator_opt.optimizer.step()

        total, d_loss, terms = self.iteration(batch, generator_opt.step, discriminator_step, self.manual_backward)
        for scheduler in self.lr_schedulers() or []:
            scheduler.step()
        size = batch["lr"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=size)
        self.log("train/loss/discriminator", d_loss, prog_bar=True, batch_size=size)
        self.log_dict({f"train/loss/{name}": value for name, value in terms.items()}, batch_size=size)
        return total

    def configure_optimizers(self):
        """One optimizer (and schedule) for the generator's groups, one for the discriminator's; `training_step`
        steps the schedules every iteration."""
        discriminator = [{"params": list(self.discriminator.parameters())}]
        optimizers = [self.optimizer(groups) for groups in (self.parameter_groups(), discriminator)]
        if self.lr_scheduler is None:
            return optimizers
        return optimizers, [self.lr_scheduler(optimizer) for optimizer in optimizers]
