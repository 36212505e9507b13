"""TATT (Ma et al., "A Text Attention Network for Spatial Deformation Robust Scene Text Image Super-resolution",
CVPR 2022): TSRN whose SRBs also read a spatial text prior, and a loader for the released checkpoints.

The SR network keeps the official names of `TSRN_TL_TRANS` (`block1` .. `block{num_blocks + 3}`, `infoGen`, `tps`,
`stn_head`) so `state_dict_G` loads without renaming. The student TP generator, which the official code saves as a
separate file (`recognizer_best_acc_0.pth`, a plain CRNN state dict), lives in `tpg` (keys `tpg.crnn.*`): the
generator alone maps LR to SR at test time, as TATT does (student TPG on the LR input).
"""

from __future__ import annotations

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
from stisr_lightning.models.blocks.srb import GruBlock
from stisr_lightning.models.blocks.text_prior import TPGenerator, TPInterpreter
from stisr_lightning.weights import (
    complete_separately_released,
    drop_unused_official_keys,
    extract_state_dict,
    load_state_dict_strict,
    read_checkpoint,
)


class RecurrentResidualBlockTL(nn.Module):
    """TATT's SRB: residual = conv3x3-BN-Mish-conv3x3-BN, concatenated with the TP map, then a vertical BiGRU block
    (1x1 conv back to `channels`); output = a horizontal BiGRU block on x + residual."""

    def __init__(self, channels: int = 64, text_channels: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.gru1 = GruBlock(channels + text_channels, channels)
        self.mish = nn.Mish()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.gru2 = GruBlock(channels, channels)

    def forward(self, x: Tensor, tp_map: Tensor) -> Tensor:
        residual = self.bn2(self.conv2(self.mish(self.bn1(self.conv1(x)))))
        fused = torch.cat([residual, tp_map], dim=1)
        residual = self.gru1(fused.transpose(-1, -2)).transpose(-1, -2)
        return self.gru2(x + residual)


class TATT(nn.Module):
    """block1 (9x9 conv + PReLU) -> TP Interpreter(TP, block1 features) -> `num_blocks` TP-guided SRBs -> conv3x3 +
    BN, a skip from block1, upsampling, 9x9 conv, tanh (no clamp, as released).

    The TP comes from the student TPG on the un-rectified LR and is detached before the SR network, so only the
    distillation loss trains the TPG. With `use_stn`, training inputs are TPS-rectified with the LR STN head
    (16x64 input, no resize, unlike TSRN); evaluation never rectifies. The two TP Interpreter switches are described
    in `TPInterpreter` (defaults: the paper's behaviour).
    """

    unused_official_keys = r"(infoGen\.transformer\.decoder\.layers\.\d+\.(?:self_attn|norm1)|infoGen\.fc_feature_in)\..+"
    """Released weights the official forward never calls: the decoder self-attention (commented out) and fc_feature_in."""
    separately_released_keys = r"tpg\..+"
    """The student TPG is released beside the generator, as a plain CRNN file (`recognizer_best_acc_0.pth`)."""

    def __init__(
        self,
        in_channels: int = 4,
        scale_factor: int = 2,
        num_blocks: int = 5,
        channels: int = 64,
        text_channels: int = 64,
        use_stn: bool = True,
        lr_size: tuple[int, int] = (16, 64),
        tps_align_corners: bool = True,
        double_encoder_input: bool = False,
        query_gru_over_batch: bool = False,
        tpg_weights: str | None = None,
    ) -> None:
        """`tpg_weights`: the student TPG's weights in the CRNN file layout (TATT's `recognizer_best_acc_0.pth`);
        with `stisr-eval --weights model_best_acc_0.pth` this evaluates the released TATT."""
        super().__init__()
        check_generator_args("tatt", scale_factor, in_channels)
        self.scale_factor = scale_factor
        self.num_blocks = num_blocks
        self.use_stn = use_stn
        self.lr_size = tuple(lr_size)

        self.tpg = TPGenerator()
        if tpg_weights is not None:
            self.tpg.load_crnn_weights(tpg_weights)
        self.separate_weights_loaded = tpg_weights is not None
        self.block1 = shallow_block(in_channels, channels)
        for index in range(num_blocks):
            setattr(self, f"block{index + 2}", RecurrentResidualBlockTL(channels, text_channels))
        self.infoGen = TPInterpreter(
            t_emb=self.tpg.num_classes,
            out_text_channels=text_channels,
            feature_size=self.lr_size,
            double_encoder_input=double_encoder_input,
            query_gru_over_batch=query_gru_over_batch,
        )
        setattr(self, f"block{num_blocks + 2}", fusion_block(channels))
        setattr(self, f"block{num_blocks + 3}", reconstruction_block(channels, in_channels, scale_factor))
        if use_stn:
            self.tps, self.stn_head = rectifier(in_channels, self.lr_size, tps_align_corners)

    def text_prior(self, lr: Tensor) -> Tensor:
        """The student TP (N, 37, 1, 26) of the LR input, with gradients (for the distillation loss)."""
        return self.tpg(lr)

    def reconstruct(self, lr: Tensor, tp: Tensor) -> Tensor:
        """SR from the LR image and a given TP (detached here: the SR loss never reaches the TPG)."""
        if lr.shape[-2:] != self.lr_size:
            raise ValueError(f"tatt: LR input must be {self.lr_size}, got {tuple(lr.shape[-2:])}")
        if self.use_stn and self.training:
            lr = self.tps(lr, self.stn_head(lr))
        shallow = self.block1(lr)
        tp_map, _ = self.infoGen(tp.detach(), shallow)
        features = shallow
        for index in range(2, self.num_blocks + 2):
            features = getattr(self, f"block{index}")(features, tp_map)
        features = getattr(self, f"block{self.num_blocks + 2}")(features)
        return torch.tanh(getattr(self, f"block{self.num_blocks + 3}")(shallow + features))

    def forward_with_prior(self, lr: Tensor) -> tuple[Tensor, Tensor]:
        tp = self.text_prior(lr)
        return self.reconstruct(lr, tp), tp

    def forward(self, lr: Tensor) -> Tensor:
        return self.forward_with_prior(lr)[0]


def load_official_tatt(
    model_path: str | Path | Mapping[str, object],
    recognizer_path: str | Path | None = None,
    double_encoder_input: bool = True,
    query_gru_over_batch: bool = True,
    tps_align_corners: bool = True,
) -> TATT:
    """Build a TATT shaped like a released checkpoint (`model_best_acc_0.pth`: `{'state_dict_G': ...}`, or a bare
    state dict, with or without `module.`) and load it strictly, after dropping `TATT.unused_official_keys`.

    `recognizer_path` is the student TPG saved beside it (`recognizer_best_acc_0.pth`); without it the student stays
    randomly initialized and the model is not the released one. The quirk switches default to the official
    behaviour here, since the released weights were trained with it.
    """
    from_file = isinstance(model_path, (str, Path))
    source = str(model_path) if from_file else "TATT state dict"
    checkpoint = read_checkpoint(model_path) if from_file else model_path
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    state = drop_unused_official_keys(TATT, extract_state_dict(checkpoint), source)
    if "block1.0.weight" not in state or "infoGen.fc_in.weight" not in state:
        raise ValueError(f"{source}: no 'block1.0.weight'/'infoGen.fc_in.weight' keys; not a TATT state dict")

    stem = state["block1.0.weight"]
    num_blocks = sum(1 for key in state if re.fullmatch(r"block\d+\.gru1\.conv1\.weight", key))
    upsample_layers = sum(1 for key in state if re.fullmatch(rf"block{num_blocks + 3}\.\d+\.conv\.weight", key))
    model = TATT(
        in_channels=stem.shape[1],
        scale_factor=2**upsample_layers,
        num_blocks=num_blocks,
        channels=stem.shape[0],
        text_channels=state["infoGen.fc_in.weight"].shape[0],
        use_stn="stn_head.stn_fc2.weight" in state,
        tps_align_corners=tps_align_corners,
        double_encoder_input=double_encoder_input,
        query_gru_over_batch=query_gru_over_batch,
    )
    if recognizer_path is not None:
        model.tpg.load_crnn_weights(recognizer_path)
        model.separate_weights_loaded = True
    load_state_dict_strict(model, complete_separately_released(model, state, source), source)
    return model
