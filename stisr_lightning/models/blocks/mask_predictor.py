"""TextDiff's mask branch B_M ("text region block"): LR features -> text-mask probabilities at HR size.

Layers read off the paper's Fig. 3: Conv-BN-ReLU, ConvTranspose, Conv-BN-ReLU, ConvTranspose, Conv-BN, Sigmoid.
Two stride-2 transposed convs would give 4x; for the usual 2x the first one upsamples (4x4, stride 2) and the
second keeps the size (3x3, stride 1) — our assumption. The TEM decides what goes in (the figure: the LR image
concatenated with the stem features).
"""

from __future__ import annotations

from torch import Tensor, nn


def _conv_bn(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels)]


def _transposed(channels: int, upsample: bool) -> nn.ConvTranspose2d:
    if upsample:
        return nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)
    return nn.ConvTranspose2d(channels, channels, 3, stride=1, padding=1)


class MaskPredictor(nn.Module):
    """Args: in_channels of the input features; channels of the hidden layers; scale_factor 1, 2 or 4."""

    def __init__(self, in_channels: int, channels: int = 64, scale_factor: int = 2) -> None:
        super().__init__()
        if scale_factor not in (1, 2, 4):
            raise ValueError(f"mask_predictor: scale_factor must be 1, 2 or 4, got {scale_factor}")
        self.scale_factor = scale_factor
        self.layers = nn.Sequential(
            *_conv_bn(in_channels, channels),
            nn.ReLU(inplace=True),
            _transposed(channels, upsample=scale_factor >= 2),
            *_conv_bn(channels, channels),
            nn.ReLU(inplace=True),
            _transposed(channels, upsample=scale_factor == 4),
            *_conv_bn(channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, features: Tensor) -> Tensor:
        """(N, in_channels, h, w) -> (N, 1, h * scale, w * scale) probabilities that a pixel is text."""
        return self.layers(features)
