"""SRCNN (Dong et al., 2014), the 9-1-5 network, run on the bicubic-upsampled LR image as the STISR baselines do."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SRCNN(nn.Module):
    """Patch extraction (9x9), non-linear mapping (1x1), reconstruction (5x5) on a bicubic x`scale_factor` input."""

    def __init__(
        self,
        in_channels: int = 3,
        scale_factor: int = 2,
        features: tuple[int, int] = (64, 32),
    ) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        first, second = features
        self.conv1 = nn.Conv2d(in_channels, first, kernel_size=9, padding=4)
        self.conv2 = nn.Conv2d(first, second, kernel_size=1)
        self.conv3 = nn.Conv2d(second, in_channels, kernel_size=5, padding=2)

    def forward(self, lr: Tensor) -> Tensor:
        x = F.interpolate(lr, scale_factor=self.scale_factor, mode="bicubic", align_corners=False)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.conv3(x)
