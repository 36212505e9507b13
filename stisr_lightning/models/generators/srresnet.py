"""SRResNet (Ledig et al., 2017): the SRGAN generator trained with MSE alone."""

from __future__ import annotations

import math

from torch import Tensor, nn


class ResidualBlock(nn.Module):
    """conv3x3-BN-activation-conv3x3-BN with an identity skip (SRGAN's block: PReLU; TextSR's: ReLU)."""

    def __init__(self, channels: int, activation: type[nn.Module] = nn.PReLU) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            activation(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    """9x9 conv + PReLU, `num_blocks` residual blocks, conv3x3 + BN with a global skip, log2(scale) x (conv,
    PixelShuffle(2), PReLU), 9x9 conv to the image. Linear output, as in the paper."""

    def __init__(
        self,
        in_channels: int = 3,
        scale_factor: int = 2,
        num_blocks: int = 16,
        channels: int = 64,
    ) -> None:
        super().__init__()
        if scale_factor < 2 or scale_factor & (scale_factor - 1):
            raise ValueError(f"srresnet: scale_factor must be a power of 2, got {scale_factor}")
        self.scale_factor = scale_factor
        self.head = nn.Sequential(nn.Conv2d(in_channels, channels, 9, padding=4), nn.PReLU())
        self.body = nn.Sequential(*(ResidualBlock(channels) for _ in range(num_blocks)))
        self.body_tail = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))
        upsample: list[nn.Module] = []
        for _ in range(int(math.log2(scale_factor))):
            upsample += [nn.Conv2d(channels, channels * 4, 3, padding=1), nn.PixelShuffle(2), nn.PReLU()]
        self.upsample = nn.Sequential(*upsample)
        self.tail = nn.Conv2d(channels, in_channels, 9, padding=4)

    def forward(self, lr: Tensor) -> Tensor:
        features = self.head(lr)
        features = features + self.body_tail(self.body(features))
        return self.tail(self.upsample(features))
