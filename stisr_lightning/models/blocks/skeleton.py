"""The skeleton every TextZoom-family generator shares (TSRN, TBSRN, TATT, LEMMA): a 9x9 shallow block, the
generator's own residual blocks, conv3x3 + BN, a skip from the shallow block, PixelShuffle upsampling and a 9x9
reconstruction conv, with STN/TPS rectification in training. Built here once, in the official attribute layout."""

from __future__ import annotations

import math

from torch import nn

from stisr_lightning.models.blocks.srb import UpsampleBlock
from stisr_lightning.models.blocks.stn_tps import STNHead, TPSSpatialTransformer


def check_generator_args(name: str, scale_factor: int, in_channels: int) -> None:
    if scale_factor < 2 or scale_factor & (scale_factor - 1):
        raise ValueError(f"{name}: scale_factor must be a power of 2, got {scale_factor}")
    if in_channels not in (3, 4):
        raise ValueError(f"{name}: in_channels must be 3 (RGB) or 4 (RGB + mask), got {in_channels}")


def shallow_block(in_channels: int, channels: int) -> nn.Sequential:
    """`block1`: 9x9 conv + PReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, channels, kernel_size=9, padding=4), nn.PReLU())


def fusion_block(channels: int) -> nn.Sequential:
    """`block{n+2}`: conv3x3 + BN after the residual blocks, before the skip from `block1`."""
    return nn.Sequential(nn.Conv2d(channels, channels, kernel_size=3, padding=1), nn.BatchNorm2d(channels))


def reconstruction_block(channels: int, out_channels: int, scale_factor: int) -> nn.Sequential:
    """`block{n+3}`: one (conv, PixelShuffle(2), Mish) per factor 2, then a 9x9 conv to the image channels."""
    upsample = [UpsampleBlock(channels, 2) for _ in range(int(math.log2(scale_factor)))]
    return nn.Sequential(*upsample, nn.Conv2d(channels, out_channels, kernel_size=9, padding=4))


def rectifier(
    in_channels: int, lr_size: tuple[int, int], align_corners: bool, stn_input_size: tuple[int, int] | None = None
) -> tuple[TPSSpatialTransformer, STNHead]:
    """`tps` and `stn_head`: 20 control points, target margins 0.05, TPS output at the LR size. The STN head sees
    the LR image itself (TBSRN, TATT, LEMMA) or TSRN's bilinear 32x64 resize of it (`stn_input_size`)."""
    tps = TPSSpatialTransformer(
        output_size=lr_size, num_control_points=20, margins=(0.05, 0.05), align_corners=align_corners
    )
    stn_head = STNHead(in_channels=in_channels, num_control_points=20, input_size=stn_input_size or lr_size)
    return tps, stn_head
