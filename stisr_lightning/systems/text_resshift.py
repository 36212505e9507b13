"""TextResShift as a system (Algorithm 1 of papers/text_resshift_progressive_diffusion.txt): each step picks the LR
source by the progressive data sampling (x0_hat, then y or x0_hat, then y, x0_hat or y_hat), draws t uniformly over
the T steps, and trains the denoiser on the decoded z0 estimate with L1 + LPIPS + the frozen OCR's CE (weights 1, 1,
0.02; experiments/text_resshift.yaml writes them as a LossMix). Adam at 1e-5 (the paper).

Outputs of `forward_train` (what the loss terms read): "sr" (the decoded z0 estimate, [0, 1]), "z0", "z0_pred" (the
latents) and "sources" (the LR source of each sample, `data.progressive.SOURCES`).
"""

from __future__ import annotations

from typing import Any

import torch

from stisr_lightning.data.progressive import ProgressiveSampling, progressive_lr
from stisr_lightning.losses.mix import LossMix
from stisr_lightning.models.generators.text_resshift import TextResShift
from stisr_lightning.systems.base import STISRSystem


class TextResShiftSystem(STISRSystem):
    def __init__(
        self,
        generator: TextResShift,
        loss: LossMix | None = None,
        progressive: ProgressiveSampling | None = None,
        sampling_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            generator: a TextResShift generator.
            loss: the loss mix (the paper: l1 1.0, lpips 1.0, ce 0.02).
            progressive: the LR-source schedule (paper: 10k steps x0_hat, 10k steps y / x0_hat, then all three);
                None or `enabled: false` trains on the data's LR images only (Table 2's "w/o data sampling").
            sampling_seed: seed of the source draws and degradations (with the step and the sample index).
            kwargs: everything else of `STISRSystem` (experiments/text_resshift.yaml: Adam at the paper's 1e-5).
        """
        super().__init__(generator, loss, **kwargs)
        if not isinstance(generator, TextResShift):
            raise ValueError(f"TextResShiftSystem.generator must be a TextResShift, got {type(generator).__name__}")
        self.progressive = progressive or ProgressiveSampling(enabled=False)
        self.sampling_seed = sampling_seed

    def forward_train(self, batch: dict[str, Any]) -> dict[str, Any]:
        generator: TextResShift = self.generator
        hr, lr = batch["hr"][:, :3], batch["lr"][:, :3]
        sources = torch.zeros(len(lr), dtype=torch.long, device=lr.device)
        if self.progressive.enabled:
            with self.full_precision():  # the degradations are data preparation: fp32 under bf16-mixed training
                lr, sources = progressive_lr(hr, lr, self.global_step, batch["index"], self.sampling_seed,
                                             self.progressive, scale=generator.scale_factor)
        timesteps = torch.randint(0, generator.scheduler.num_train_timesteps, (len(lr),), device=lr.device)
        return {**generator.training_prediction(lr, hr, timesteps), "sources": sources}

    def run_metrics(self) -> dict[str, float]:
        """Table 3's "#parameters": every network the generator runs (denoiser, autoencoder, text encoder, OCR),
        in millions; the paper does not say which parts its 155M counts."""
        return {"parameters_m": sum(p.numel() for p in self.generator.parameters()) / 1e6}
