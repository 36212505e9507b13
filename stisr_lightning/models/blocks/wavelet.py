"""Batched one-level 2-D discrete wavelet transform and its exact inverse (orthonormal Haar).

Layout: `dwt2d` maps (N, C, H, W) to (N, 4C, H/2, W/2) with the sub-bands stacked band-major, [LL | LH | HL | HH],
each block C channels wide: LL = local average, LH = vertical change (horizontal edges), HL = horizontal change
(vertical edges), HH = diagonal. Orthonormal scaling (1/2 per 2x2 block) so `idwt2d(dwt2d(x)) == x` and energy is
preserved.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SUPPORTED_WAVELETS = ("haar",)


def _check_wavelet(wavelet: str) -> None:
    if wavelet not in SUPPORTED_WAVELETS:
        raise ValueError(f"wavelet: unsupported wavelet {wavelet!r} (supported: {', '.join(SUPPORTED_WAVELETS)})")


def dwt2d(x: Tensor, wavelet: str = "haar") -> Tensor:
    _check_wavelet(wavelet)
    if x.dim() != 4 or x.size(-1) % 2 or x.size(-2) % 2:
        raise ValueError(f"wavelet: dwt2d needs (N, C, H, W) with even H and W, got {tuple(x.shape)}")
    top_left, top_right = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    bottom_left, bottom_right = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    low = (top_left + top_right + bottom_left + bottom_right) / 2
    vertical = (bottom_left + bottom_right - top_left - top_right) / 2
    horizontal = (top_right + bottom_right - top_left - bottom_left) / 2
    diagonal = (top_left + bottom_right - top_right - bottom_left) / 2
    return torch.cat([low, vertical, horizontal, diagonal], dim=1)


def idwt2d(bands: Tensor, wavelet: str = "haar") -> Tensor:
    _check_wavelet(wavelet)
    if bands.dim() != 4 or bands.size(1) % 4:
        raise ValueError(f"wavelet: idwt2d needs (N, 4C, H, W) sub-bands, got {tuple(bands.shape)}")
    low, vertical, horizontal, diagonal = bands.chunk(4, dim=1)
    top_left = (low - vertical - horizontal + diagonal) / 2
    top_right = (low - vertical + horizontal - diagonal) / 2
    bottom_left = (low + vertical - horizontal - diagonal) / 2
    bottom_right = (low + vertical + horizontal + diagonal) / 2
    batch, channels, height, width = low.shape
    top = torch.stack([top_left, top_right], dim=-1)  # (N, C, H, W, 2): columns interleaved
    bottom = torch.stack([bottom_left, bottom_right], dim=-1)
    return torch.stack([top, bottom], dim=-3).reshape(batch, channels, 2 * height, 2 * width)


class DWT2d(nn.Module):
    def __init__(self, wavelet: str = "haar") -> None:
        super().__init__()
        _check_wavelet(wavelet)
        self.wavelet = wavelet

    def forward(self, x: Tensor) -> Tensor:
        return dwt2d(x, self.wavelet)


class IDWT2d(nn.Module):
    def __init__(self, wavelet: str = "haar") -> None:
        super().__init__()
        _check_wavelet(wavelet)
        self.wavelet = wavelet

    def forward(self, bands: Tensor) -> Tensor:
        return idwt2d(bands, self.wavelet)
