"""Bicubic interpolation: the no-learning baseline row of every STISR table."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Bicubic(nn.Module):
    """Resize every channel bicubically by `scale_factor`; no parameters. The result is clamped to [0, 1] because
    bicubic overshoots at edges and the output is meant as an image."""

    def __init__(self, scale_factor: int = 2) -> None:
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, lr: Tensor) -> Tensor:
        return F.interpolate(lr, scale_factor=self.scale_factor, mode="bicubic", align_corners=False).clamp(0, 1)
