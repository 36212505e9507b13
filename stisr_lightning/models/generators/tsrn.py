"""TSRN (Wang et al., TextZoom, ECCV 2020) and a loader for its released checkpoints.

Submodules keep the official names (`block1` .. `block{num_blocks + 3}`, `stn_head`, `tps`) so TextZoom's
`state_dict_G` loads without renaming.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stisr_lightning.models.blocks.skeleton import (
    check_generator_args,
    fusion_block,
    reconstruction_block,
    rectifier,
    shallow_block,
)
from stisr_lightning.models.blocks.srb import RecurrentResidualBlock
from stisr_lightning.weights import extract_state_dict, load_state_dict_strict, read_checkpoint

STN_INPUT_SIZE = (32, 64)
"""TSRN resizes its input to this size for the ASTER STN head and samples the TPS output from it."""


class TSRN(nn.Module):
    """block1 (9x9 conv + PReLU), `num_blocks` SRBs, conv3x3 + BN, a skip from block1, upsampling (conv,
    PixelShuffle, Mish) per factor 2, 9x9 conv, tanh (no clamp, as released).

    With `use_stn`, training inputs are first rectified: resized bilinearly to 32x64, control points from the ASTER
    STN head, TPS-sampled back to `lr_size`. Evaluation never rectifies, as in the official code.
    `tps_align_corners=True` is the sampling of the released models (torch <= 1.2).
    """

    def __init__(
        self,
        in_channels: int = 4,
        scale_factor: int = 2,
        num_blocks: int = 5,
        channels: int = 64,
        use_stn: bool = True,
        lr_size: tuple[int, int] = (16, 64),
        tps_align_corners: bool = True,
    ) -> None:
        super().__init__()
        check_generator_args("tsrn", scale_factor, in_channels)
        self.scale_factor = scale_factor
        self.num_blocks = num_blocks
        self.use_stn = use_stn

        self.block1 = shallow_block(in_channels, channels)
        for index in range(num_blocks):
            setattr(self, f"block{index + 2}", RecurrentResidualBlock(channels))
        setattr(self, f"block{num_blocks + 2}", fusion_block(channels))
        setattr(self, f"block{num_blocks + 3}", reconstruction_block(channels, in_channels, scale_factor))
        if use_stn:
            self.tps, self.stn_head = rectifier(in_channels, lr_size, tps_align_corners, stn_input_size=STN_INPUT_SIZE)

    def rectify(self, lr: Tensor) -> Tensor:
        resized = F.interpolate(lr, STN_INPUT_SIZE, mode="bilinear", align_corners=True)
        return self.tps(resized, self.stn_head(resized))

    def forward(self, lr: Tensor) -> Tensor:
        if self.use_stn and self.training:
            lr = self.rectify(lr)
        shallow = self.block1(lr)
        features = shallow
        for index in range(2, self.num_blocks + 3):
            features = getattr(self, f"block{index}")(features)
        return torch.tanh(getattr(self, f"block{self.num_blocks + 3}")(shallow + features))


def load_official_tsrn(
    path_or_state: str | Path | Mapping[str, object],
    lr_size: tuple[int, int] = (16, 64),
    tps_align_corners: bool = True,
) -> TSRN:
    """Build a TSRN shaped like a TextZoom checkpoint and load it strictly.

    Accepts a file path or an already loaded object: `{'state_dict_G': ...}` (TextZoom's container) or a bare state
    dict, with or without the DataParallel `module.` prefix. Channels, block count, scale factor and the STN switch are
    read from the keys; the TPS buffers come from the file and must match `lr_size`.
    """
    from_file = isinstance(path_or_state, (str, Path))
    source = str(path_or_state) if from_file else "TSRN state dict"
    checkpoint = read_checkpoint(path_or_state) if from_file else path_or_state
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    state = extract_state_dict(checkpoint)
    if "block1.0.weight" not in state:
        raise ValueError(f"{source}: no 'block1.0.weight' key; not a TSRN generator state dict")

    stem = state["block1.0.weight"]
    num_blocks = sum(1 for key in state if re.fullmatch(r"block\d+\.conv1\.weight", key))
    upsample_layers = sum(1 for key in state if re.fullmatch(rf"block{num_blocks + 3}\.\d+\.conv\.weight", key))
    use_stn = "stn_head.stn_fc2.weight" in state
    if use_stn and state["tps.target_coordinate_repr"].shape[0] != lr_size[0] * lr_size[1]:
        raise ValueError(
            f"{source}: tps.target_coordinate_repr has {state['tps.target_coordinate_repr'].shape[0]} rows, "
            f"lr_size {lr_size} needs {lr_size[0] * lr_size[1]}"
        )
    model = TSRN(
        in_channels=stem.shape[1],
        scale_factor=2**upsample_layers,
        num_blocks=num_blocks,
        channels=stem.shape[0],
        use_stn=use_stn,
        lr_size=lr_size,
        tps_align_corners=tps_align_corners,
    )
    load_state_dict_strict(model, state, source)
    return model
