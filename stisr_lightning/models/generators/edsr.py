"""EDSR (Lim et al., CVPRW 2017) as CAR (Sun & Chen, TIP 2020) trains it, with TBSRN's STN in front: the SR network
of the EDSR + CDistNet + quantization paper (edsr_cdistnet_quantization.txt, Sec. 4.1.1).

The paper fine-tunes CAR's x2 EDSR ("32 Res-Blocks with 256 channels", res_scale 0.1, DIV2K-trained together with
CAR's resampler) on TextZoom and, "for a fair comparison" with TBSRN, puts TBSRN's STN first. As in TBSRN's code,
the STN rectifies training inputs only. Module names follow sunwj/CAR's `EDSR/edsr.py` (`sub_mean`, `head`,
`body.<i>.body.{0,2}`, `tail.0.0`, `tail.1`, `add_mean`), so CAR's `usn.pth` and EDSR-PyTorch's `edsr_x2-*.pt`
load unchanged (`generator_weights`); those files hold no STN, which starts at identity.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from stisr_lightning.models.blocks.skeleton import check_generator_args, rectifier

RGB_MEAN = (0.4488, 0.4371, 0.4040)
"""DIV2K's mean colour, which EDSR subtracts before its head and adds back after its tail."""


class MeanShift(nn.Conv2d):
    """A fixed 1x1 convolution adding `sign * rgb_range * RGB_MEAN`; a conv so the official keys load into it."""

    def __init__(self, rgb_range: float, sign: int) -> None:
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(RGB_MEAN))
        self.requires_grad_(False)


class ResBlock(nn.Module):
    """conv-ReLU-conv, scaled by `res_scale` (0.1 in the 256-channel EDSR, which keeps training stable), plus x."""

    def __init__(self, channels: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 3, padding=1)
        )
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) * self.res_scale


class EDSR(nn.Module):
    """Args:
        scale_factor: 2 as in the paper (TextZoom's 16x64 -> 32x128); any power of 2 (one conv + PixelShuffle(2) each).
        num_blocks, channels, res_scale: 32, 256, 0.1 (CAR's "r32f256" EDSR; EDSR-baseline is 16, 64, 1.0).
        use_stn: TBSRN's STN/TPS rectification of training inputs at `lr_size` (the paper's addition).
        rgb_range: the pixel range the weights expect: 1 for CAR's `usn.pth` and the suite's runs, 255 for
            EDSR-PyTorch releases. Inputs and outputs stay in [0, 1]; the network sees them scaled.
    """

    def __init__(
        self,
        in_channels: int = 3,
        scale_factor: int = 2,
        num_blocks: int = 32,
        channels: int = 256,
        res_scale: float = 0.1,
        use_stn: bool = True,
        lr_size: tuple[int, int] = (16, 64),
        tps_align_corners: bool = True,
        rgb_range: float = 1.0,
    ) -> None:
        super().__init__()
        check_generator_args("edsr", scale_factor, in_channels)
        if in_channels != 3:
            raise ValueError(f"edsr: in_channels must be 3 (EDSR shifts RGB by its mean colour), got {in_channels}")
        self.scale_factor = scale_factor
        self.use_stn = use_stn
        self.rgb_range = rgb_range
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1))
        self.body = nn.Sequential(
            *(ResBlock(channels, res_scale) for _ in range(num_blocks)), nn.Conv2d(channels, channels, 3, padding=1)
        )
        upsampler: list[nn.Module] = []
        for _ in range(int(math.log2(scale_factor))):
            upsampler += [nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2)]
        self.tail = nn.Sequential(nn.Sequential(*upsampler), nn.Conv2d(channels, 3, 3, padding=1))
        if use_stn:
            self.tps, self.stn_head = rectifier(3, tuple(lr_size), tps_align_corners)

    separately_released_keys = r"(tps|stn_head)\..+"
    """CAR's and EDSR-PyTorch's files have no STN (the paper adds it): it keeps its identity initialization."""
    separate_weights_loaded = True

    def forward(self, lr: Tensor) -> Tensor:
        if self.use_stn and self.training:
            lr = self.tps(lr, self.stn_head(lr))
        x = self.head(self.sub_mean(lr * self.rgb_range))
        x = self.add_mean(self.tail(self.body(x) + x))
        return x / self.rgb_range
