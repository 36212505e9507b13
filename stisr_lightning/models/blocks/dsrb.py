"""TextDiff's Double Sequential Residual Block (DSRB): TSRN's SRB with a second, wavelet-domain residual branch.

The paper says only that DSRB "introduces wavelet transform on the basis of SRB" to learn spatial and frequency
information together; the combination below is our assumption (no code is public):
- spatial branch: SRB's conv3x3-BN-Mish-conv3x3-BN; with a text prior, the prior map is concatenated before the
  vertical BiGRU (as TATT's `RecurrentResidualBlockTL`), otherwise the vertical BiGRU runs on the residual alone;
- frequency branch: Haar DWT -> conv3x3-BN-Mish-conv3x3 over the 4 sub-bands jointly -> inverse DWT;
- output: horizontal BiGRU on x + spatial + frequency.
H and W must be even (the LR feature map is 16x64).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stisr_lightning.models.blocks.srb import GruBlock
from stisr_lightning.models.blocks.wavelet import DWT2d, IDWT2d


class DoubleSequentialResidualBlock(nn.Module):
    """Args: channels of the feature map; prior_channels of the text-prior map fed to every block (0 = none);
    wavelet name for the frequency branch."""

    def __init__(self, channels: int = 64, prior_channels: int = 0, wavelet: str = "haar") -> None:
        super().__init__()
        self.prior_channels = prior_channels
        self.spatial = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.Mish(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
        )
        self.gru1 = GruBlock(channels + prior_channels, channels)
        self.dwt = DWT2d(wavelet)
        self.frequency = nn.Sequential(
            nn.Conv2d(4 * channels, 4 * channels, 3, padding=1),
            nn.BatchNorm2d(4 * channels),
            nn.Mish(),
            nn.Conv2d(4 * channels, 4 * channels, 3, padding=1),
        )
        self.idwt = IDWT2d(wavelet)
        self.gru2 = GruBlock(channels, channels)

    def forward(self, x: Tensor, prior: Tensor | None = None) -> Tensor:
        if (prior is None) != (self.prior_channels == 0):
            raise ValueError(f"dsrb: built with prior_channels={self.prior_channels}, got prior={prior is not None}")
        spatial = self.spatial(x)
        if prior is not None:
            spatial = torch.cat([spatial, prior], dim=1)
        spatial = self.gru1(spatial.transpose(-1, -2)).transpose(-1, -2)
        frequency = self.idwt(self.frequency(self.dwt(x)))
        return self.gru2(x + spatial + frequency)
