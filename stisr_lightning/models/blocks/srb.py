"""TSRN's sequential residual block (SRB) and its parts, shared by TSRN, TBSRN, TATT, LEMMA and TextDiff.

Attribute names follow TextZoom's `src/model/tsrn.py` so official state dicts load without renaming.
"""

from __future__ import annotations

from torch import Tensor, nn


class GruBlock(nn.Module):
    """1x1 conv, then a bidirectional GRU along the width of every row; hidden size out/2 so channels stay `out`.

    For a GRU along the height, call it on `x.transpose(-1, -2)` and transpose back.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels % 2:
            raise ValueError(f"srb: GruBlock out_channels must be even, got {out_channels}")
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.gru = nn.GRU(out_channels, out_channels // 2, bidirectional=True, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        batch, channels, height, width = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(batch * height, width, channels)
        rows, _ = self.gru(rows)
        return rows.reshape(batch, height, width, channels).permute(0, 3, 1, 2)


class RecurrentResidualBlock(nn.Module):
    """TSRN's SRB: residual = conv3x3-BN-Mish-conv3x3-BN, then a vertical BiGRU on the residual; output = a
    horizontal BiGRU on x + residual."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.gru1 = GruBlock(channels, channels)
        self.mish = nn.Mish()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.gru2 = GruBlock(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.bn2(self.conv2(self.mish(self.bn1(self.conv1(x)))))
        residual = self.gru1(residual.transpose(-1, -2)).transpose(-1, -2)
        return self.gru2(x + residual)


class UpsampleBlock(nn.Module):
    """conv3x3 to channels * scale^2, PixelShuffle(scale), Mish."""

    def __init__(self, channels: int = 64, scale_factor: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * scale_factor**2, kernel_size=3, padding=1)
        self.pixel_shuffle = nn.PixelShuffle(scale_factor)
        self.mish = nn.Mish()

    def forward(self, x: Tensor) -> Tensor:
        return self.mish(self.pixel_shuffle(self.conv(x)))
