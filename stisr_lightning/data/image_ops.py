"""Small image operations that several layers share: the text mask of TSRN / TATT / TextDiff and SSIM's Gaussian
window (used by the SSIM metric and TATT's TSC loss)."""

from __future__ import annotations

import torch
from torch import Tensor

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def text_mask_from_gray(images: Tensor) -> Tensor:
    """(N, >=3, H, W) RGB in [0, 1] -> (N, 1, H, W) float mask: 1 where the luma <= that image's mean luma.

    The TSRN/TATT convention (dark text on a lighter background); the data pipeline's 4th channel is the same up to
    PIL's integer rounding of the gray value.
    """
    if images.dim() != 4 or images.size(1) < 3:
        raise ValueError(f"text_mask_from_gray needs (N, >=3, H, W) images, got {tuple(images.shape)}")
    gray = (images[:, :3] * images.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return (gray <= gray.mean(dim=(2, 3), keepdim=True)).to(images.dtype)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """(size, size) normalized Gaussian, the outer product of the 1-D window."""
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    line = torch.exp(-(offsets**2) / (2 * sigma**2))
    line = line / line.sum()
    return (line[:, None] * line[None, :]).float()
