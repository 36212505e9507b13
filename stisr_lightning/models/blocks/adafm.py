"""How LEMMA injects its guidance map into each sequential residual block (paper Sec. 3.4, Eq. 7).

`AdaptiveFusion` is AdaFM; `ConcatFusion` is what the paper falls back to when AdaFM is removed (Table 4).
Attribute names follow the official `AffineModulate` (`BN`, `conv1x1_{1,2,3}`, `channel_attn`, `aggregation`, `BN2`)
so `block{i}.affine.*` of the released checkpoint loads as is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GlobalDepthwiseConv(nn.Conv2d):
    """GDWConv: one learned (H, W) kernel per channel collapses each map to 1x1.

    Unlike global average pooling it can weight where on the text line a response occurs, which is why the
    paper uses it for the channel attention; the kernel is therefore tied to the LR feature grid (16x64).
    """

    def __init__(self, channels: int, spatial_size: tuple[int, int]) -> None:
        super().__init__(channels, channels, kernel_size=spatial_size, groups=channels)


def _projection(in_channels: int, channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 1), nn.BatchNorm2d(channels), nn.PReLU(), nn.Conv2d(channels, channels, 1)
    )


class AdaptiveFusion(nn.Module):
    """AdaFM: X3 + X2 * sigmoid(MLP(GDWConv(X1))), the Xi being three projections of concat(features, BN(guidance)).

    As in the official code the channel-attended X2 passes through one more projection (`aggregation`) before the
    sum, and the sum is batch-normalized (`BN2`); the MLP is three 1x1 convs with ReLUs.
    """

    def __init__(self, channels: int = 64, spatial_size: tuple[int, int] = (16, 64)) -> None:
        super().__init__()
        self.BN = nn.BatchNorm2d(channels)
        self.conv1x1_1 = _projection(2 * channels, channels)
        self.conv1x1_2 = _projection(2 * channels, channels)
        self.conv1x1_3 = _projection(2 * channels, channels)
        self.channel_attn = nn.Sequential(
            GlobalDepthwiseConv(channels, spatial_size),
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
            nn.Sigmoid(),
        )
        self.aggregation = _projection(channels, channels)
        self.BN2 = nn.BatchNorm2d(channels)

    def forward(self, features: Tensor, guidance: Tensor) -> Tensor:
        joint = torch.cat([features, self.BN(guidance)], dim=1)
        gate = self.channel_attn(self.conv1x1_1(joint))  # (N, C, 1, 1)
        attended = self.aggregation(gate * self.conv1x1_2(joint))
        return self.BN2(self.conv1x1_3(joint) + attended)


class ConcatFusion(nn.Module):
    """The "without AdaFM" baseline of Table 4: concatenate features and guidance, 1x1 conv back to `channels`."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, features: Tensor, guidance: Tensor) -> Tensor:
        return self.fuse(torch.cat([features, guidance], dim=1))
