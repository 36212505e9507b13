"""TBSRN (Chen et al., Scene Text Telescope, CVPR 2021) and a loader for its released `state_dict_G`.

The TSRN skeleton with a different block: conv-BN-Mish-conv-BN, then a self-attention "feature enhancer" over the
1024 positions of the 16x64 LR feature map, with a fixed 2-D sine position code concatenated to the 64 channels.
Attribute names follow the official `model/tbsrn.py`. The official module also builds a `conv`/`bn` pair and two
GRUs per block that its forward never calls; they are left out here and `load_official_tbsrn` drops their keys
with a warning.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from stisr_lightning.models.blocks.skeleton import (
    check_generator_args,
    fusion_block,
    reconstruction_block,
    rectifier,
    shallow_block,
)
from stisr_lightning.models.recognizers.stt_transformer import (
    MultiHeadedAttention,
    PositionwiseFeedForward,
    StdLayerNorm,
)
from stisr_lightning.weights import (
    drop_unused_official_keys,
    extract_state_dict,
    load_state_dict_strict,
    read_checkpoint,
)

POSITION_CHANNELS = 64
"""Channels of the fixed 2-D position code concatenated to the features in every FeatureEnhancer."""


def positional_encoding_2d(channels: int, height: int, width: int) -> Tensor:
    """(channels, height, width) sine code: the first half of the channels encodes x, the second half y, each as
    interleaved sin/cos pairs (the official `positionalencoding2d`)."""
    if channels % 4:
        raise ValueError(f"tbsrn: 2-D position code needs channels divisible by 4, got {channels}")
    half = channels // 2
    frequency = torch.exp(torch.arange(0.0, half, 2) * -(math.log(10000.0) / half))
    x = torch.arange(0.0, width)[:, None] * frequency  # (W, half/2)
    y = torch.arange(0.0, height)[:, None] * frequency  # (H, half/2)
    code = torch.zeros(channels, height, width)
    code[0:half:2] = torch.sin(x).T[:, None, :].expand(-1, height, -1)
    code[1:half:2] = torch.cos(x).T[:, None, :].expand(-1, height, -1)
    code[half::2] = torch.sin(y).T[:, :, None].expand(-1, -1, width)
    code[half + 1::2] = torch.cos(y).T[:, :, None].expand(-1, -1, width)
    return code


class FeatureEnhancer(nn.Module):
    """One post-norm transformer encoder layer over all H*W positions (4 heads, d 128 = 64 features + 64 position,
    FFN 128), projected back to 64 channels."""

    def __init__(self, channels: int = 64, lr_size: tuple[int, int] = (16, 64)) -> None:
        super().__init__()
        d_model = channels + POSITION_CHANNELS
        self.multihead = MultiHeadedAttention(heads=4, d_model=d_model, dropout=0.1)
        self.mul_layernorm1 = StdLayerNorm(d_model)
        self.pff = PositionwiseFeedForward(d_model, d_model, dropout=0.1)
        self.mul_layernorm3 = StdLayerNorm(d_model)
        self.linear = nn.Linear(d_model, channels)
        position = positional_encoding_2d(POSITION_CHANNELS, *lr_size).flatten(1)
        self.register_buffer("position", position[None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        if height * width != self.position.shape[-1]:
            raise ValueError(f"tbsrn: feature map {height}x{width} does not match the position code's lr_size")
        tokens = torch.cat([x.flatten(2), self.position.expand(batch, -1, -1)], dim=1).transpose(1, 2)
        tokens = self.mul_layernorm1(tokens + self.multihead(tokens, tokens, tokens, probabilities=False)[0])
        tokens = self.mul_layernorm3(tokens + self.pff(tokens))
        return self.linear(tokens).transpose(1, 2).reshape(batch, channels, height, width)


class TransformerResidualBlock(nn.Module):
    """x + FeatureEnhancer(conv3x3-BN-Mish-conv3x3-BN(x)); Xavier-uniform init of every weight matrix/kernel."""

    def __init__(self, channels: int = 64, lr_size: tuple[int, int] = (16, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.mish = nn.Mish()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.feature_enhancer = FeatureEnhancer(channels, lr_size)
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.bn2(self.conv2(self.mish(self.bn1(self.conv1(x)))))
        return x + self.feature_enhancer(residual)


class TBSRN(nn.Module):
    """block1 (9x9 conv + PReLU), `num_blocks` transformer residual blocks, conv3x3 + BN, a skip from block1,
    upsampling, 9x9 conv, tanh (no clamp, as released).

    With `use_stn`, training inputs are rectified at the LR size (STN head for 16x64 inputs, TPS output 16x64);
    evaluation never rectifies, as in the official code. The official default is 3 channels (`--mask` off).
    `tps_align_corners=True` is the sampling of the released model (torch 1.2).
    """

    unused_official_keys = r"(conv|bn|block\d+\.gru[12])\..+"
    """Released weights of modules the official forward never calls: the 3->3 input conv/bn and every block's GRUs."""

    def __init__(
        self,
        in_channels: int = 3,
        scale_factor: int = 2,
        num_blocks: int = 5,
        use_stn: bool = True,
        lr_size: tuple[int, int] = (16, 64),
        tps_align_corners: bool = True,
    ) -> None:
        super().__init__()
        check_generator_args("tbsrn", scale_factor, in_channels)
        channels = 64
        self.scale_factor = scale_factor
        self.num_blocks = num_blocks
        self.use_stn = use_stn
        lr_size = tuple(lr_size)

        self.block1 = shallow_block(in_channels, channels)
        for index in range(num_blocks):
            setattr(self, f"block{index + 2}", TransformerResidualBlock(channels, lr_size))
        setattr(self, f"block{num_blocks + 2}", fusion_block(channels))
        setattr(self, f"block{num_blocks + 3}", reconstruction_block(channels, in_channels, scale_factor))
        if use_stn:
            self.tps, self.stn_head = rectifier(in_channels, lr_size, tps_align_corners)

    def forward(self, lr: Tensor) -> Tensor:
        if self.use_stn and self.training:
            lr = self.tps(lr, self.stn_head(lr))
        shallow = self.block1(lr)
        features = shallow
        for index in range(2, self.num_blocks + 3):
            features = getattr(self, f"block{index}")(features)
        return torch.tanh(getattr(self, f"block{self.num_blocks + 3}")(shallow + features))


def load_official_tbsrn(
    path_or_state: str | Path | Mapping[str, object],
    tps_align_corners: bool = True,
) -> TBSRN:
    """Build a TBSRN shaped like a Scene Text Telescope checkpoint and load it.

    Accepts a file path or an already loaded object (`{'state_dict_G': ...}` or a bare state dict, with or without
    `module.`). Keys of modules the official forward never calls (`conv.*`, `bn.*`, `block*.gru1/gru2.*`) are dropped
    with a warning naming them; every other key must match exactly.
    """
    from_file = isinstance(path_or_state, (str, Path))
    source = str(path_or_state) if from_file else "TBSRN state dict"
    checkpoint = read_checkpoint(path_or_state) if from_file else path_or_state
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    state = extract_state_dict(checkpoint)
    if "block1.0.weight" not in state:
        raise ValueError(f"{source}: no 'block1.0.weight' key; not a TBSRN generator state dict")

    state = drop_unused_official_keys(TBSRN, state, source)

    num_blocks = sum(1 for key in state if re.fullmatch(r"block\d+\.feature_enhancer\.linear\.weight", key))
    upsample_layers = sum(1 for key in state if re.fullmatch(rf"block{num_blocks + 3}\.\d+\.conv\.weight", key))
    use_stn = "stn_head.stn_fc2.weight" in state
    lr_size = (16, 64)
    if use_stn and state["tps.target_coordinate_repr"].shape[0] != lr_size[0] * lr_size[1]:
        raise ValueError(
            f"{source}: tps.target_coordinate_repr has {state['tps.target_coordinate_repr'].shape[0]} rows, "
            f"the official 16x64 LR size needs {lr_size[0] * lr_size[1]}"
        )
    model = TBSRN(
        in_channels=state["block1.0.weight"].shape[1],
        scale_factor=2**upsample_layers,
        num_blocks=num_blocks,
        use_stn=use_stn,
        lr_size=lr_size,
        tps_align_corners=tps_align_corners,
    )
    load_state_dict_strict(model, state, source)
    return model
