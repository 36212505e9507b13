"""TATT's losses: TP distillation (student TPG on LR vs frozen teacher on HR) and the text structure consistency
(TSSIM) loss, which asks SR to commute with small rotations.

Keys read from the system's outputs (written by `systems.tatt.TATTSystem`):
- "tp_lr", "tp_hr": student and teacher TPs, (N, 37, 1, 26) probabilities;
- "sr_rerotated": rotate(G(lr)), "sr_rotated": G(rotate(lr)), "hr_rotated": rotate(hr), all at the HR size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from stisr_lightning.data.image_ops import gaussian_window
from stisr_lightning.losses.base import LossTerm

SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2


class TPDistillationLoss(LossTerm):
    """mean|TP_hr - TP_lr| + KL(TP_hr || TP_lr), both element-wise means (KLDivLoss's default 'mean', not
    'batchmean'); the 1e-20 offsets keep log and KL finite, as in the official SemanticLoss."""

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        tp_lr, tp_hr = outputs["tp_lr"], outputs["tp_hr"].detach()
        if tp_lr.shape != tp_hr.shape:
            raise ValueError(f"TPDistillationLoss: tp_lr {tuple(tp_lr.shape)} and tp_hr {tuple(tp_hr.shape)} differ")
        target = tp_hr + 1e-20
        kl = (target * (target.log() - torch.log(tp_lr + 1e-20))).mean()  # KLDivLoss(reduction="mean"), by hand
        return (tp_hr - tp_lr).abs().mean() + kl


def tri_ssim(a: Tensor, b: Tensor, c: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Three-image SSIM map averaged to a scalar: pairwise sums of means and covariances over the three pairs,
    Gaussian window, channels filtered separately, zero padding; equals 1 when a == b == c."""
    if not a.shape == b.shape == c.shape or a.dim() != 4:
        raise ValueError(f"tri_ssim: need three (N, C, H, W) tensors of one shape, got {a.shape}, {b.shape}, {c.shape}")
    channels = a.shape[1]
    kernel = gaussian_window(window_size, sigma).to(a)[None, None].expand(channels, 1, window_size, window_size)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, kernel, padding=window_size // 2, groups=channels)

    mu_a, mu_b, mu_c = blur(a), blur(b), blur(c)
    var_a, var_b, var_c = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(c * c) - mu_c**2
    cov_ab, cov_bc, cov_ca = blur(a * b) - mu_a * mu_b, blur(b * c) - mu_b * mu_c, blur(c * a) - mu_c * mu_a
    numerator = (mu_a * mu_b + mu_b * mu_c + mu_c * mu_a + SSIM_C1) * (cov_ab + cov_bc + cov_ca + SSIM_C2)
    denominator = (mu_a**2 + mu_b**2 + mu_c**2 + SSIM_C1) * (var_a + var_b + var_c + SSIM_C2)
    return (numerator / denominator).mean()


def sample_rotations(
    batch_size: int,
    max_degrees: float,
    aspect_ratio: float,
    ratio_jitter: float = 0.2,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sample angles (radians, uniform in +-max_degrees) and aspect ratios (H/W + uniform in +-ratio_jitter),
    the random draw of TATT's `torch_rotate_img`; pass a seeded `generator` for reproducible draws."""
    draws = torch.rand(2, batch_size, generator=generator)
    angles = torch.deg2rad((draws[0] * 2 - 1) * max_degrees)
    ratios = aspect_ratio + (draws[1] * 2 - 1) * ratio_jitter
    return angles.to(device), ratios.to(device)


def rotate_images(images: Tensor, angles: Tensor, ratio: Tensor | float) -> Tensor:
    """Rotate each image about its centre by `angles` (N,) radians, zero padding, bilinear.

    The affine grid works in normalized [-1, 1] coordinates, so the off-diagonal terms are scaled by `ratio` (H/W,
    per sample or one number) to make it a rotation in pixels; TATT jitters this ratio on purpose.
    """
    batch = images.shape[0]
    angles = angles.to(images).reshape(batch)
    ratio = torch.as_tensor(ratio, dtype=images.dtype, device=images.device).expand(batch)
    cos, sin, zero = torch.cos(angles), torch.sin(angles), torch.zeros_like(angles)
    theta = torch.stack([cos, sin * ratio, zero, -sin / ratio, cos, zero], dim=1).view(batch, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class TSSIMLoss(LossTerm):
    """1 - TRI_SSIM(rotate(G(lr)), G(rotate(lr)), rotate(hr)) over all channels (the mask too, as the official code).

    The system produces the three images (see the module docstring); without them (rotation disabled) the term is
    an error, so leave it out of the loss mix or give it weight 0.
    """

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        missing = [key for key in ("sr_rerotated", "sr_rotated", "hr_rotated") if key not in outputs]
        if missing:
            raise KeyError(f"TSSIMLoss: outputs lack {missing}; the system's rotate_degrees must be > 0")
        return 1 - tri_ssim(outputs["sr_rerotated"], outputs["sr_rotated"], outputs["hr_rotated"])
