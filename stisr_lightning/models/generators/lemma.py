"""LEMMA (Guo et al., IJCAI 2023, "Towards Robust Scene Text Image Super-resolution via Explicit Location
Enhancement") and a loader for `LEMMA-release.pth`.

Submodules keep the official names (`block1` .. `block{num_blocks + 3}`, `block{i}.affine`, `block{i}.BN`, `tps`,
`stn_head`, `guidanceGen`, `position_prior`) so the released `state_dict_G` loads without renaming. The text prior
(ABINet in the paper) is any module mapping RGB LR images (N, 3, 16, 64) in [0, 1] to a `TextPrior`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from stisr_lightning.models.blocks.adafm import AdaptiveFusion, ConcatFusion
from stisr_lightning.models.blocks.lemma_guidance import Alignment, GuidanceGenerator
from stisr_lightning.models.blocks.skeleton import (
    check_generator_args,
    fusion_block,
    reconstruction_block,
    rectifier,
    shallow_block,
)
from stisr_lightning.models.recognizers.prior import TextPrior
from stisr_lightning.weights import (
    drop_unused_official_keys,
    extract_state_dict,
    load_state_dict_strict,
    read_checkpoint,
)

CHANNELS = 64
"""SR feature width; LEMMA's guidance branch works at the same width (d_model 64)."""

PRIOR_CLASSES = 37
"""ABINet charset_36 + null: the width of the language logits fed to `text_proj`."""


class BiGRURows(nn.Module):
    """Bidirectional GRU along the width of every row (hidden channels/2 per direction). Unlike TSRN's GruBlock
    there is no 1x1 conv in front: LEMMA's official block has none."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gru = nn.GRU(channels, channels // 2, bidirectional=True, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        rows, _ = self.gru(x.permute(0, 2, 3, 1).reshape(batch * height, width, channels))
        return rows.reshape(batch, height, width, channels).permute(0, 3, 1, 2)


class GuidedRecurrentResidualBlock(nn.Module):
    """SRB with guidance (official `RecurrentResidualBlockAffine`): residual = conv-BN-Mish-conv-BN, fused with the
    guidance map, then a vertical BiGRU; output = horizontal BiGRU on BN(x + residual)."""

    def __init__(self, channels: int, fusion: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.gru1 = BiGRURows(channels)
        self.mish = nn.Mish()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.gru2 = BiGRURows(channels)
        self.affine = fusion
        self.BN = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor, guidance: Tensor) -> Tensor:
        residual = self.bn2(self.conv2(self.mish(self.bn1(self.conv1(x)))))
        residual = self.affine(residual, guidance)
        residual = self.gru1(residual.transpose(-1, -2)).transpose(-1, -2)
        return self.gru2(self.BN(x + residual))


class LEMMA(nn.Module):
    """STN (training only) -> block1 (9x9 conv + PReLU) = X_I -> guidance X_G = guidanceGen(X_I, prior(LR RGB))
    -> `num_blocks` guided SRBs -> conv3x3 + BN -> skip from X_I -> upsampling -> 9x9 conv -> tanh (no clamp).

    The prior sees the first 3 channels of the (rectified, in training) LR image, detached, as in the official code;
    it is trained through its own fine-tuning loss (use `forward_with_prior`) and through the guidance it feeds.

    Ablation switches (paper defaults; see `GuidanceGenerator` for what each one removes):
    Table 1: `char_location_attention`, `feature_selection`; Table 2: `alignment`; Table 4: `location_enhancement`,
    `multimodal_alignment`, `fusion` ('concat' = without AdaFM); Table 7: `expansion_conv`, `pixel_to_region`;
    supplement: `topk` (of the 16*64 = 1024 LR positions). Precedence: without LEM its four sub-switches and `topk`
    have no effect; without MAM `alignment` has none; `alignment='none'` uses no image tokens, so LEM is not built.
    """

    unused_official_keys = r"(guidanceGen\.(?:text_pos|select_pos))\.pe"
    """Positional encodings the official code builds but never uses."""

    def __init__(
        self,
        prior: nn.Module,
        in_channels: int = 4,
        scale_factor: int = 2,
        num_blocks: int = 5,
        use_stn: bool = True,
        lr_size: tuple[int, int] = (16, 64),
        tps_align_corners: bool = True,
        location_enhancement: bool = True,
        char_location_attention: bool = True,
        expansion_conv: bool = True,
        pixel_to_region: bool = True,
        feature_selection: bool = True,
        topk: int = 500,
        multimodal_alignment: bool = True,
        alignment: Alignment = "bidirectional",
        fusion: Literal["adaptive", "concat"] = "adaptive",
    ) -> None:
        super().__init__()
        check_generator_args("lemma", scale_factor, in_channels)
        if fusion not in ("adaptive", "concat"):
            raise ValueError(f"lemma: fusion must be 'adaptive' or 'concat', got {fusion!r}")
        if num_blocks < 1:
            raise ValueError(f"lemma: num_blocks must be >= 1, got {num_blocks}")
        self.scale_factor = scale_factor
        self.num_blocks = num_blocks
        self.use_stn = use_stn
        self.lr_size = tuple(lr_size)

        self.block1 = shallow_block(in_channels, CHANNELS)
        for index in range(num_blocks):
            block_fusion = AdaptiveFusion(CHANNELS, self.lr_size) if fusion == "adaptive" else ConcatFusion(CHANNELS)
            setattr(self, f"block{index + 2}", GuidedRecurrentResidualBlock(CHANNELS, block_fusion))
        setattr(self, f"block{num_blocks + 2}", fusion_block(CHANNELS))
        setattr(self, f"block{num_blocks + 3}", reconstruction_block(CHANNELS, in_channels, scale_factor))
        if use_stn:
            self.tps, self.stn_head = rectifier(in_channels, self.lr_size, tps_align_corners)
        self.guidanceGen = GuidanceGenerator(
            channels=CHANNELS,
            num_classes=PRIOR_CLASSES,
            lr_size=self.lr_size,
            location_enhancement=location_enhancement,
            char_location_attention=char_location_attention,
            expansion_conv=expansion_conv,
            pixel_to_region=pixel_to_region,
            feature_selection=feature_selection,
            topk=topk,
            multimodal_alignment=multimodal_alignment,
            alignment=alignment,
        )
        self.position_prior = prior

    def step_parts(self, lr: Tensor) -> dict[str, Callable[[], None]]:
        """The text prior's forward and backward, which `stisr-bench train` times as a share of the step."""
        def prior_step() -> None:
            output = self.position_prior(lr[:, :3])
            (output.vision_logits.sum() + output.language_logits.sum()).backward()
        return {"ABINet prior": prior_step}

    def forward_with_prior(self, lr: Tensor) -> tuple[Tensor, TextPrior]:
        if tuple(lr.shape[-2:]) != self.lr_size:
            raise ValueError(f"lemma: LR input must be {self.lr_size}, got {tuple(lr.shape[-2:])}")
        if self.use_stn and self.training:
            lr = self.tps(lr, self.stn_head(lr))
        prior = self.position_prior(lr[:, :3].detach())
        shallow = self.block1(lr)
        guidance = self.guidanceGen(shallow, prior)
        features = shallow
        for index in range(2, self.num_blocks + 2):
            features = getattr(self, f"block{index}")(features, guidance)
        features = getattr(self, f"block{self.num_blocks + 2}")(features)
        return torch.tanh(getattr(self, f"block{self.num_blocks + 3}")(shallow + features)), prior

    def forward(self, lr: Tensor) -> Tensor:
        return self.forward_with_prior(lr)[0]


def load_official_lemma(
    path_or_state: str | Path | Mapping[str, object],
    prior: nn.Module,
    lr_size: tuple[int, int] = (16, 64),
    tps_align_corners: bool = True,
) -> LEMMA:
    """Build a LEMMA shaped like an official checkpoint (default flags) and load it strictly, prior included.

    Accepts a path to `LEMMA-release.pth`, its loaded `{'state_dict_G': ...}` container, or a bare state dict, with
    or without `module.`. The `position_prior.*` keys go to `prior` (which must have ABINet's official layout);
    `LEMMA.unused_official_keys` are dropped. Input channels, block count, scale and the STN switch are read from the keys.
    """
    from_file = isinstance(path_or_state, (str, Path))
    source = str(path_or_state) if from_file else "LEMMA state dict"
    checkpoint = read_checkpoint(path_or_state) if from_file else path_or_state
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    state = drop_unused_official_keys(LEMMA, extract_state_dict(dict(checkpoint)), source)
    if "block1.0.weight" not in state or "guidanceGen.DWC.weight" not in state:
        raise ValueError(f"{source}: no 'block1.0.weight' / 'guidanceGen.DWC.weight' key; not a LEMMA state dict")

    num_blocks = sum(1 for key in state if re.fullmatch(r"block\d+\.affine\.BN2\.weight", key))
    upsample_layers = sum(1 for key in state if re.fullmatch(rf"block{num_blocks + 3}\.\d+\.conv\.weight", key))
    model = LEMMA(
        prior,
        in_channels=state["block1.0.weight"].shape[1],
        scale_factor=2**upsample_layers,
        num_blocks=num_blocks,
        use_stn="stn_head.stn_fc2.weight" in state,
        lr_size=lr_size,
        tps_align_corners=tps_align_corners,
    )
    load_state_dict_strict(model, state, source)
    return model
