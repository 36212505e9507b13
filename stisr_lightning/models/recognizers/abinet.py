"""ABINet (Fang et al., CVPR 2021) as LEMMA uses it: a text prior for the guidance branch and an evaluation recognizer.

Module and attribute names follow FangShancheng/ABINet (`BaseVision`, `BCNLanguage`, `BaseAlignment`), so the
released files load strictly: the pretraining files `{'model': state_dict}` with `backbone.*`/`attention.*`/`cls.*`
(vision) and `proj`/`token_encoder`/`pos_encoder`/`model.layers.*`/`cls` (language); the full train-abinet file
with the same keys under `vision.`/`language.`/`alignment.`; LEMMA-release.pth under `position_prior.`. One pass
vision -> language (-> alignment) is run, as LEMMA does; ABINet's iterative refinement is left out.
"""

from __future__ import annotations


from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stisr_lightning.data.charset import CHARSET_36, abinet_label_ids
from stisr_lightning.models.recognizers.abinet_blocks import (
    CrossAttentionDecoder,
    PositionAttention,
    PositionalEncoding,
    ResTransformer,
)
from stisr_lightning.models.recognizers.base import RecognitionOutput, TorchRecognizer
from stisr_lightning.models.recognizers.objectives import sequence_cross_entropy
from stisr_lightning.models.recognizers.prior import TextPrior
from stisr_lightning.weights import extract_state_dict, load_state_dict_strict, read_checkpoint, report_untrained

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_CLASSES = len(CHARSET_36) + 1


def predicted_length(logits: Tensor) -> Tensor:
    """(N,) position of the first null step + 1 (the end token counts), or T when no step is null."""
    is_null = logits.argmax(-1) == 0
    first_null = (is_null & (is_null.cumsum(-1) == 1)).int().argmax(-1) + 1
    return torch.where(is_null.any(-1), first_null, torch.full_like(first_null, logits.size(1)))


def imagenet_normalize(images: Tensor) -> Tensor:
    mean, std = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1), images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


class VisionOutput(NamedTuple):
    logits: Tensor  # (N, T, C)
    features: Tensor  # (N, T, 512) attended vectors, the alignment module's vision input
    attention: Tensor  # (N, T, 8, 32) softmax over H*W
    pooled: Tensor  # (N, 512) backbone features averaged over the grid


class ABINetVision(nn.Module):
    """`BaseVision`: ResNet-45 + 3-layer transformer backbone, position attention, per-step classifier."""

    def __init__(self, max_length: int = 25, num_layers: int = 3) -> None:
        super().__init__()
        self.backbone = ResTransformer(num_layers=num_layers)
        self.attention = PositionAttention(max_length=max_length + 1)
        self.cls = nn.Linear(512, NUM_CLASSES)

    def forward(self, images: Tensor) -> VisionOutput:
        """`images`: (N, 3, 32, 128), ImageNet-normalized."""
        feature = self.backbone(images)
        vectors, attention = self.attention(feature)
        return VisionOutput(self.cls(vectors), vectors, attention, feature.mean((2, 3)))


class BCNLanguage(nn.Module):
    """Bidirectional cloze network: each step is predicted from every other step's character distribution."""

    def __init__(self, max_length: int = 25, num_layers: int = 4, detach: bool = True) -> None:
        super().__init__()
        self.max_length = max_length + 1
        self.detach = detach
        self.proj = nn.Linear(NUM_CLASSES, 512, bias=False)
        self.token_encoder = PositionalEncoding(512, max_len=self.max_length)
        self.pos_encoder = PositionalEncoding(512, max_len=self.max_length, dropout=0.0)
        self.model = CrossAttentionDecoder(num_layers)
        self.cls = nn.Linear(512, NUM_CLASSES)

    def forward(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """`tokens`: (N, T, C) probabilities, `lengths`: (N,) in [2, T] -> logits (N, T, C), features (N, T, 512)."""
        if self.detach:
            tokens = tokens.detach()
        memory = self.token_encoder(self.proj(tokens))
        steps = torch.arange(self.max_length, device=tokens.device)
        padding = steps.unsqueeze(0) >= lengths.unsqueeze(1)  # (N, T): keys beyond the predicted length
        location = torch.eye(self.max_length, dtype=torch.bool, device=tokens.device)  # a step never sees itself
        query = self.pos_encoder.pe[: self.max_length, 0].expand(tokens.size(0), -1, -1)
        features = self.model(query, memory, location, padding)
        return self.cls(features), features


class ABINetAlignment(nn.Module):
    """`BaseAlignment`: a learned gate fusing language and vision features."""

    def __init__(self) -> None:
        super().__init__()
        self.w_att = nn.Linear(2 * 512, 512)
        self.cls = nn.Linear(512, NUM_CLASSES)

    def forward(self, language_features: Tensor, vision_features: Tensor) -> Tensor:
        gate = torch.sigmoid(self.w_att(torch.cat([language_features, vision_features], dim=-1)))
        return self.cls(gate * vision_features + (1 - gate) * language_features)


def read_abinet_state(path: str | Path) -> dict[str, Tensor]:
    """Any ABINet-bearing file as a flat state dict: `{'model': ...}` releases, LEMMA's `state_dict_G` (the
    `position_prior.` part is kept), a suite recognizer file or Lightning checkpoint (`recognizer.` part)."""
    state = extract_state_dict(read_checkpoint(path), lightning_prefix="recognizer.")
    prefix = "position_prior."
    if any(key.startswith(prefix) for key in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


class ABINetPrior(nn.Module):
    """LEMMA's position prior (`PositionAwareModule`): LR (N, >=3, 16, 64) in [0, 1] -> `TextPrior`.

    Args:
        vision_weights: ABINet's `best-pretrain-vision-model.pth` (or any file with the `BaseVision` keys).
        language_weights: ABINet's `pretrain-language-model.pth`.
        weights: one file holding both parts under `vision.`/`language.`: the full train-abinet checkpoint
            (its `alignment.*` is not used by the prior and is ignored), the suite's `abinet.pth` from
            experiments/recognizers/abinet_synth.yaml, or LEMMA-release.pth (`position_prior.*`).
        max_length: characters per word; T = max_length + 1 steps.
    """

    def __init__(self, vision_weights: str | None = None, language_weights: str | None = None,
                 weights: str | None = None, max_length: int = 25) -> None:
        super().__init__()
        if weights is not None and (vision_weights is not None or language_weights is not None):
            raise ValueError("ABINetPrior: give either `weights` or `vision_weights`/`language_weights`, not both")
        self.max_length = max_length + 1
        self.vision = ABINetVision(max_length)
        self.language = BCNLanguage(max_length)
        if vision_weights is not None:
            load_state_dict_strict(self.vision, read_abinet_state(vision_weights), str(vision_weights))
        if language_weights is not None:
            load_state_dict_strict(self.language, read_abinet_state(language_weights), str(language_weights))
        if weights is not None:
            state = read_abinet_state(weights)
            load_state_dict_strict(self, {k: v for k, v in state.items() if not k.startswith("alignment.")}, str(weights))
        if weights is None and (vision_weights is None or language_weights is None):
            report_untrained("ABINetPrior: vision or language weights missing, that part starts untrained; train "
                             "experiments/recognizers/abinet_synth.yaml or give ABINet's pretraining files")

    def forward(self, lr: Tensor) -> TextPrior:
        if lr.dim() != 4 or lr.size(1) < 3 or tuple(lr.shape[-2:]) != (16, 64):
            raise ValueError(f"ABINetPrior: expected LR images (N, >=3, 16, 64), got shape {tuple(lr.shape)}")
        images = F.interpolate(lr[:, :3].detach(), scale_factor=2, mode="bicubic", align_corners=True)
        vision = self.vision(imagenet_normalize(images))
        lengths = predicted_length(vision.logits).clamp(2, self.max_length)
        language_logits, _ = self.language(vision.logits.softmax(-1), lengths)
        attention = F.interpolate(vision.attention, scale_factor=2, mode="bicubic", align_corners=True)
        return TextPrior(
            attention=attention,
            vision_logits=vision.logits,
            language_logits=language_logits,
            lengths=predicted_length(language_logits.detach()).clamp(2, self.max_length),
        )


class ABINetRecognizer(TorchRecognizer):
    """ABINet for evaluation and pretraining: charset_36 (case-blind), one vision -> language (-> alignment) pass.

    Args:
        max_length: characters per word (T = max_length + 1).
        use_language: read the language model's logits; False reads the vision model alone (ABINet-SV-like).
        use_alignment: read the alignment module's logits, as ABINet's own evaluation does (needs the language model).
    """

    name = "abinet"
    charset = CHARSET_36

    def __init__(self, max_length: int = 25, use_language: bool = True, use_alignment: bool = False) -> None:
        super().__init__()
        if use_alignment and not use_language:
            raise ValueError("ABINetRecognizer: use_alignment=True needs use_language=True")
        self.max_length = max_length
        self.vision = ABINetVision(max_length)
        self.language = BCNLanguage(max_length) if use_language else None
        self.alignment = ABINetAlignment() if use_alignment else None

    def preprocess(self, images: Tensor) -> Tensor:
        """RGB -> 32x128 (LR 16x64: bicubic x2 with aligned corners, as LEMMA; other sizes: bicubic resize)."""
        images = images[:, :3]
        if tuple(images.shape[-2:]) != (32, 128):
            lr_size = tuple(images.shape[-2:]) == (16, 64)
            images = F.interpolate(images, size=(32, 128), mode="bicubic", align_corners=lr_size)
        return imagenet_normalize(images)

    def _all_logits(self, images: Tensor) -> tuple[list[Tensor], VisionOutput]:
        vision = self.vision(self.preprocess(images))
        logits = [vision.logits]
        if self.language is not None:
            lengths = predicted_length(vision.logits).clamp(2, self.max_length + 1)
            language_logits, language_features = self.language(vision.logits.softmax(-1), lengths)
            logits.append(language_logits)
            if self.alignment is not None:
                logits.append(self.alignment(language_features, vision.features))
        return logits, vision

    def forward(self, images: Tensor) -> RecognitionOutput:
        logits, vision = self._all_logits(images)
        return RecognitionOutput(logits=logits[-1], attention=vision.attention, features=vision.pooled)

    def decode(self, logits: Tensor) -> list[str]:
        """Greedy: argmax per step, stop at the first null."""
        best = logits.argmax(-1)
        keep = (best == 0).int().cumsum(-1) == 0
        best, keep = best.cpu().tolist(), keep.cpu().tolist()
        return ["".join(CHARSET_36[k - 1] for k, ok in zip(row, mask) if ok) for row, mask in zip(best, keep)]

    def training_loss(self, images: Tensor, labels: list[str]) -> Tensor:
        """Sum of the per-step CE of every head (vision, language, alignment) against the null-padded ids."""
        logits, _ = self._all_logits(images)
        targets = abinet_label_ids(labels, self.max_length)
        return sum(sequence_cross_entropy(head, targets) for head in logits)

    @classmethod
    def from_official_checkpoint(cls, path: str | Path, language_path: str | Path | None = None,
                                 **kwargs: Any) -> ABINetRecognizer:
        """Load the full train-abinet file (`vision.*`, `language.*`, `alignment.*`; the alignment weights are
        ignored unless `use_alignment=True`), the suite's `abinet.pth`, or the two pretraining files
        (`path` = vision, `language_path` = language; give `use_language=False` for the vision file alone)."""
        model = cls(**kwargs)
        state = read_abinet_state(path)
        if not any(key.startswith("vision.") for key in state):  # a BaseVision file
            if model.language is not None and language_path is None:
                raise ValueError(f"{path}: a vision-only ABINet file; pass language_path or use_language=False")
            state = {f"vision.{k}": v for k, v in state.items()}
            if model.language is not None:
                state.update({f"language.{k}": v for k, v in read_abinet_state(language_path).items()})
        unused = tuple(f"{name}." for name in ("language", "alignment") if getattr(model, name) is None)
        load_state_dict_strict(model, {k: v for k, v in state.items() if not k.startswith(unused)}, str(path))
        return model
