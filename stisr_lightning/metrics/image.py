"""PSNR and SSIM on the RGB channels, per image by default, or batch-averaged as in the official STISR code.

Per image (default): SR and HR clamped to [0, 1], one value per image, mean over images.
`batch_averaged=True` reproduces TextZoom/TBSRN/TATT/LEMMA: no clamp, PSNR from the MSE of the whole batch and SSIM
as the mean of the batch's SSIM map, then the mean over batches (so the numbers depend on the batch size).
Both keep (sum, count) states, so the result is exact under DDP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from stisr_lightning.data.image_ops import gaussian_window

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def _rgb_pair(sr: Tensor, hr: Tensor, metric: str, clamp: bool) -> tuple[Tensor, Tensor]:
    if sr.shape != hr.shape or sr.dim() != 4 or sr.shape[1] < 3:
        raise ValueError(
            f"{metric}: expected two (N, C>=3, H, W) tensors of one shape, got {tuple(sr.shape)} and {tuple(hr.shape)}"
        )
    sr, hr = sr[:, :3].float(), hr[:, :3].float()
    return (sr.clamp(0, 1), hr.clamp(0, 1)) if clamp else (sr, hr)


def ssim_map(sr: Tensor, hr: Tensor, window: Tensor) -> Tensor:
    """Per-pixel SSIM, each channel filtered separately (grouped conv) with zero padding of half the window."""
    channels = sr.shape[1]
    kernel = window.to(sr)[None, None].expand(channels, 1, *window.shape)
    pad = window.shape[-1] // 2

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, kernel, padding=pad, groups=channels)

    mu_sr, mu_hr = blur(sr), blur(hr)
    var_sr = blur(sr * sr) - mu_sr**2
    var_hr = blur(hr * hr) - mu_hr**2
    covariance = blur(sr * hr) - mu_sr * mu_hr
    numerator = (2 * mu_sr * mu_hr + SSIM_C1) * (2 * covariance + SSIM_C2)
    denominator = (mu_sr**2 + mu_hr**2 + SSIM_C1) * (var_sr + var_hr + SSIM_C2)
    return numerator / denominator


class _AveragedImageMetric(Metric):
    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, batch_averaged: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.batch_averaged = batch_averaged
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _add(self, values: Tensor) -> None:
        self.total += values.double().sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count).float()


class PSNR(_AveragedImageMetric):
    """Peak signal-to-noise ratio in dB for images in [0, 1] (peak 1, i.e. 255 on the 8-bit scale)."""

    def update(self, sr: Tensor, hr: Tensor) -> None:
        sr, hr = _rgb_pair(sr, hr, "PSNR", clamp=not self.batch_averaged)
        if self.batch_averaged:
            mse = ((sr * 255 - hr * 255) ** 2).mean()
            self._add(20 * torch.log10(255.0 / mse.sqrt())[None])
        else:
            mse = (sr - hr).pow(2).mean(dim=(1, 2, 3))
            self._add(-10 * torch.log10(mse))


class SSIM(_AveragedImageMetric):
    """Structural similarity: Gaussian window 11, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2 (data range 1), zero padding."""

    def __init__(self, batch_averaged: bool = False, **kwargs) -> None:
        super().__init__(batch_averaged=batch_averaged, **kwargs)
        self.register_buffer("window", gaussian_window(), persistent=False)

    def update(self, sr: Tensor, hr: Tensor) -> None:
        sr, hr = _rgb_pair(sr, hr, "SSIM", clamp=not self.batch_averaged)
        values = ssim_map(sr, hr, self.window)
        self._add(values.mean()[None] if self.batch_averaged else values.mean(dim=(1, 2, 3)))
