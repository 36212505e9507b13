"""Progressive data sampling of the text ResShift paper (text_resshift_progressive_diffusion.txt, Sec. "Our
Implementation" and the appendix "Data sampling strategy"): which low-resolution source each training pair uses.

- stage 1 (the first `first_stage_steps`, 10k): only x0_hat, the HR image degraded by BSRGAN, "to build the model's
  core SR capabilities";
- stage 2 (the next `second_stage_steps`, 10k): the real LR image y or x0_hat, with equal probability;
- stage 3 (the rest of the 400k steps): y_hat, the real LR image degraded again by BSRGAN, joins y and x0_hat. The
  paper gives no mixing proportions for this stage; the three sources are drawn with equal probability by default
  (`final_mix`).

The paper names two pipelines for x0_hat and y_hat: BSRGAN (its data section, the default) and Real-ESRGAN's
second-order pipeline (its Algorithm 1): `degradation: realesrgan` selects the latter.

Pure and batched like the degradations it uses: the choice and the degradations depend only on (seed, step,
sample index), so a run is reproducible on any number of devices. `enabled=False` always uses y (Table 2's
"w/o data sampling strategy").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from stisr_lightning.data.degradations import SampleRNG, bsrgan_degradation, realesrgan_degradation

SOURCES = ("y", "x0_hat", "y_hat")
"""Source ids: 0 the real LR image, 1 the degraded HR image, 2 the degraded LR image."""
DEGRADATIONS = {"bsrgan": bsrgan_degradation, "realesrgan": realesrgan_degradation}


@dataclass(frozen=True)
class ProgressiveSampling:
    first_stage_steps: int = 10_000
    second_stage_steps: int = 10_000
    final_mix: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Relative probabilities of (y, x0_hat, y_hat) in stage 3."""
    enabled: bool = True
    degradation: str = "bsrgan"
    """How x0_hat and y_hat are made: `bsrgan` or `realesrgan` (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.degradation not in DEGRADATIONS:
            raise ValueError(f"ProgressiveSampling: degradation must be one of {', '.join(DEGRADATIONS)}, got "
                             f"{self.degradation!r}")
        if self.first_stage_steps < 0 or self.second_stage_steps < 0:
            raise ValueError(f"ProgressiveSampling: stage lengths must be >= 0, got {self.first_stage_steps}, "
                             f"{self.second_stage_steps}")
        if len(self.final_mix) != 3 or min(self.final_mix) < 0 or sum(self.final_mix) <= 0:
            raise ValueError(f"ProgressiveSampling: final_mix must be 3 non-negative weights, got {self.final_mix}")
        object.__setattr__(self, "final_mix", tuple(float(w) for w in self.final_mix))

    def probabilities(self, step: int) -> tuple[float, float, float]:
        """P(y), P(x0_hat), P(y_hat) at a training step."""
        if not self.enabled:
            return (1.0, 0.0, 0.0)
        if step < self.first_stage_steps:
            return (0.0, 1.0, 0.0)
        if step < self.first_stage_steps + self.second_stage_steps:
            return (0.5, 0.5, 0.0)
        total = sum(self.final_mix)
        return tuple(w / total for w in self.final_mix)

    def sources(self, step: int, ids: Tensor, seed: int) -> Tensor:
        """(N,) source id per sample, drawn from `probabilities(step)`."""
        return _rng(seed, step, ids).choice("progressive/source", self.probabilities(step))


def _rng(seed: int, step: int, ids: Tensor) -> SampleRNG:
    return SampleRNG((int(seed) << 32) | int(step), ids)


def progressive_lr(
    hr: Tensor, lr: Tensor, step: int, ids: Tensor, seed: int, sampling: ProgressiveSampling, scale: int
) -> tuple[Tensor, Tensor]:
    """The LR batch of a training step and the source of each image (`SOURCES`). x0_hat is the sampling's
    degradation at the data's `scale` on HR, bicubic-resized to the LR batch's size when the LR images were stored
    resized (DiffTSR-style data: LR at the HR size); y_hat is the degradation at scale 1 on y. Only the samples that
    use a degraded source are degraded."""
    if hr.shape[1] != 3 or lr.shape[1] != 3:
        raise ValueError(f"progressive_lr: the degradations work on RGB images, got {hr.shape[1]} / {lr.shape[1]} "
                         "channels (set data.mask: false)")
    if scale not in (1, 2, 3, 4):
        raise ValueError(f"progressive_lr: the degradations scale by 1, 2, 3 or 4, got scale={scale}")
    degrade = DEGRADATIONS[sampling.degradation]
    sources = sampling.sources(step, ids, seed).to(lr.device)
    out = lr.clone()
    step_seed = (int(seed) << 32) | int(step)
    for source, image, factor in ((1, hr, scale), (2, lr, 1)):
        rows = (sources == source).nonzero().squeeze(1)
        if rows.numel():
            degraded = degrade(image[rows], step_seed + source, ids[rows.cpu()], scale=factor).to(out)
            if degraded.shape[-2:] != out.shape[-2:]:
                degraded = F.interpolate(degraded, size=out.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
            out[rows] = degraded
    return out, sources
