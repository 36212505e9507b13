"""The text-focus loss of Scene Text Telescope (Chen et al., CVPR 2021), as TBSRN and LEMMA train with it.

A frozen STT transformer reads the HR and the SR image with the same teacher-forced label:
- position-aware term: L1 between the two cross-attention maps (N, 16, L_max, 256), mean over every element,
  padded decoding steps included;
- content-aware term: cross-entropy of the SR predictions in which every wrong class is weighted by how easily it is
  confused with the target glyph (`confusion_weighted_ce`).
STT adds both to the MSE; this term returns only `attention_weight * L_attn + content_weight * L_wce` (10 and 0.0005
as released) so that a `LossMix` holds the MSE and LEMMA's alpha_1 = 0.5.

Confusion weights. The official table comes from STT's `confuse.pkl`, a 62x62 glyph-distance matrix (digits, A-Z,
a-z). Offline, without that file, `glyph_confusion_weights` builds the same kind of matrix from glyphs rendered with
the installed fonts and passes it through the identical table construction.

Normalization note: the official `weight_cross_entropy` divides the summed loss by `gt.shape[0]`, and `gt` is the
flat list of all target characters (end tokens included), so it is a mean over characters, not over images.
STT's own `TextFocusLoss` scores the HR predictions (no gradient reaches SR); LEMMA's copy scores the SR predictions.
This term follows LEMMA.
"""

from __future__ import annotations


import io
import pickle
import string
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from stisr_lightning.data.synthetic import discover_fonts, load_font
from stisr_lightning.losses.base import LossTerm
from stisr_lightning.models.recognizers.stt_transformer import STTTransformer, encode_stt_labels
from stisr_lightning.weights import frozen_loss_recognizer, resolve_weights

GLYPHS = string.digits + string.ascii_uppercase + string.ascii_lowercase
"""Row/column order of `confuse.pkl`."""
OFFICIAL_DISTANCE_MEAN = 1.07
OFFICIAL_DISTANCE_MIN = 0.02
"""Off-diagonal mean and minimum of the official matrix; rendered distances are mapped onto both."""

_NUMPY_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Reconstructs numpy arrays and nothing else (a pickle can otherwise run arbitrary code)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def confusion_table(distances: Tensor) -> Tensor:
    """STT's `load_confuse_matrix` on a (62, 62) glyph-distance matrix in `GLYPHS` order, vectorized.

    Reproduced with its quirk: the rows are reordered to [end, digits, lower, UPPER] and a column of ones is
    prepended, but the columns stay [pad, digits, UPPER, lower]. After the reciprocal (1/0 -> 1), every letter
    column j of the 37-class alphabet takes, off the diagonal, the larger of column j (the UPPER glyph) and
    column j + 26 (the lower glyph). Returns (37, 37) float32; row = target class, column = predicted class.
    """
    if tuple(distances.shape) != (62, 62):
        raise ValueError(f"text_focus: confusion distances must be 62x62, got {tuple(distances.shape)}")
    distances = distances.to(torch.float64)
    rows = torch.cat([torch.ones(1, 62, dtype=torch.float64), distances[:10], distances[36:], distances[10:36]])
    table = torch.cat([torch.ones(63, 1, dtype=torch.float64), rows], dim=1).reciprocal()
    table = torch.where(torch.isinf(table), torch.ones_like(table), table).float()  # official: torch.Tensor(float64)
    letters = torch.arange(11, 37)
    merged = torch.maximum(table[:, letters], table[:, letters + 26])
    off_diagonal = torch.arange(63)[:, None] != letters[None, :]
    table[:, letters] = torch.where(off_diagonal, merged, table[:, letters])
    return table[:37, :37].contiguous()


def official_confusion_weights(confuse_pkl_path: str | Path) -> Tensor:
    """The (37, 37) weight table from STT/LEMMA's `confuse.pkl`, exactly as the official code builds it."""
    path = resolve_weights(confuse_pkl_path)
    if not path.is_file():
        raise FileNotFoundError(f"confusion matrix not found: {path}")
    try:
        data = _NumpyArrayUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as error:  # noqa: BLE001 - every unpickling failure means the same thing here
        raise ValueError(f"{path}: not a pickled numpy array ({type(error).__name__}: {error})") from None
    if not isinstance(data, np.ndarray) or data.shape != (62, 62):
        shape = getattr(data, "shape", "")
        raise ValueError(f"{path}: expected a 62x62 numpy array, got {type(data).__name__} {shape}")
    return confusion_table(torch.from_numpy(np.asarray(data, dtype=np.float64)))


def _glyph_vectors(font_path: str, canvas: int = 24, font_size: int = 48) -> Tensor | None:
    """(62, canvas^2) glyph images, each cropped to its ink, fitted into the canvas keeping its aspect ratio, then
    centred and scaled to zero mean and unit norm; None when the font lacks a glyph. Cropping removes size and
    baseline, so case pairs such as o/O and s/S come out close, as in the official matrix."""
    font = load_font(font_path, font_size)
    vectors = []
    for glyph in GLYPHS:
        image = Image.new("L", (2 * font_size, 2 * font_size), 0)
        ImageDraw.Draw(image).text((font_size // 2, font_size // 4), glyph, fill=255, font=font)
        box = image.getbbox()
        if box is None:
            return None
        ink = image.crop(box)
        scale = canvas / max(ink.size)
        ink = ink.resize((max(1, round(ink.width * scale)), max(1, round(ink.height * scale))), Image.BILINEAR)
        fitted = Image.new("L", (canvas, canvas), 0)
        fitted.paste(ink, ((canvas - ink.width) // 2, (canvas - ink.height) // 2))
        vectors.append(torch.from_numpy(np.asarray(fitted, dtype=np.float64)).flatten())
    stacked = torch.stack(vectors)
    stacked = stacked - stacked.mean(1, keepdim=True)
    return stacked / stacked.norm(dim=1, keepdim=True).clamp_min(1e-12)


@lru_cache(maxsize=4)
def _glyph_distances(fonts: tuple[str, ...]) -> Tensor:
    """Mean over fonts of the L2 distance between normalized glyph images, (62, 62) float64."""
    per_font = [vectors for vectors in map(_glyph_vectors, fonts) if vectors is not None]
    if not per_font:
        raise ValueError(f"text_focus: none of the {len(fonts)} fonts renders all 62 glyphs {GLYPHS!r}")
    return torch.stack([torch.cdist(v, v) for v in per_font]).mean(0)


def _match_official_statistics(distances: Tensor) -> Tensor:
    """Map off-diagonal distances by a * d^p, with p and a chosen so that the minimum is 0.02 and the mean 1.07.

    Pixel distances between normalized glyphs all lie within a factor of about 4 of each other, while the official
    ones span 0.02..3.46; a power keeps the ranking and gives the weights (1/d) the official range. p comes from
    bisection on mean((d / d_min)^p) = 1.07 / 0.02, which increases with p.
    """
    off_diagonal = ~torch.eye(distances.shape[0], dtype=torch.bool)
    ratios = distances[off_diagonal] / distances[off_diagonal].min()
    low, high = 0.0, 64.0
    for _ in range(60):
        power = (low + high) / 2
        too_flat = ratios.pow(power).mean() < OFFICIAL_DISTANCE_MEAN / OFFICIAL_DISTANCE_MIN
        low, high = (power, high) if too_flat else (low, power)
    mapped = (distances / distances[off_diagonal].min()).pow(power) * OFFICIAL_DISTANCE_MIN
    return torch.where(off_diagonal, mapped, torch.zeros_like(mapped))


def glyph_confusion_weights(fonts: Sequence[str] | None = None) -> Tensor:
    """The offline stand-in for `confuse.pkl`: (37, 37) weights from glyphs rendered with the installed fonts.

    Distance = mean over fonts of the L2 distance between normalized glyph images (`_glyph_vectors`), mapped to the
    official off-diagonal minimum (0.02) and mean (1.07) by `_match_official_statistics`; the diagonal stays 0. It goes
    through the same `confusion_table` as the official file, so only the distance source differs. With the default
    fonts the closest pairs are I/l, S/s, i/l, O/o. Deterministic for a given font list; cached in memory only.
    """
    fonts = tuple(fonts) if fonts is not None else tuple(discover_fonts())
    if not fonts:
        raise ValueError("text_focus: no fonts found for the glyph confusion weights; pass fonts= or a confuse_pkl")
    return confusion_table(_match_official_statistics(_glyph_distances(fonts)))


def confusion_weighted_ce(logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """sum_i -log(w_g exp(p_ig) / sum_c w_c exp(p_ic)) / len(targets), with w = weights[g], g = targets[i].

    `logits` (M, C) and `targets` (M,) hold one row per character; dividing by M is the official `gt.shape[0]`.
    Computed as a log-softmax of logits + log w, which equals the official exp/sum form without its overflow.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"confusion_weighted_ce: expected logits (M, C) and targets (M,), got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    log_probs = (logits + weights[targets].log()).log_softmax(-1)
    return -log_probs.gather(1, targets[:, None]).sum() / max(len(targets), 1)


class TextFocusLoss(LossTerm):
    """attention_weight * L1(attention(HR), attention(SR)) + content_weight * confusion-weighted CE(SR).

    Args:
        recognizer: the STT transformer; frozen here (eval mode, no gradients to its weights, never trained).
        attention_weight, content_weight: STT's internal weights (10 and 0.0005).
        confuse_pkl: path to the official `confuse.pkl`; None uses `glyph_confusion_weights()`.
        recognizer_weights: weights file for the recognizer (`pretrain_transformer.pth`, or `stt.pth` from
            experiments/recognizers/stt_synth.yaml); None keeps the recognizer's current weights.
    """

    def __init__(
        self,
        recognizer: STTTransformer,
        attention_weight: float = 10.0,
        content_weight: float = 0.0005,
        confuse_pkl: str | None = None,
        recognizer_weights: str | None = None,
    ) -> None:
        super().__init__()
        self.recognizer = frozen_loss_recognizer(
            recognizer, recognizer_weights, "TextFocusLoss",
            "train experiments/recognizers/stt_synth.yaml or give pretrain_transformer.pth",
        )
        self.attention_weight = attention_weight
        self.content_weight = content_weight
        weights = official_confusion_weights(confuse_pkl) if confuse_pkl else glyph_confusion_weights()
        self.register_buffer("confusion_weights", weights, persistent=False)

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        sr, labels = outputs["sr"], list(batch["label"])
        with torch.no_grad():
            _, hr_attention, _ = self.recognizer.teacher_forced(batch["hr"], labels)
        sr_logits, sr_attention, lengths = self.recognizer.teacher_forced(sr, labels)
        loss = self.attention_weight * F.l1_loss(sr_attention, hr_attention)
        if self.content_weight:
            _, targets, _ = encode_stt_labels(labels, sr.device)
            valid = torch.arange(targets.shape[1], device=sr.device) < lengths[:, None]
            content = confusion_weighted_ce(sr_logits[valid], targets[valid], self.confusion_weights)
            loss = loss + self.content_weight * content
        return loss
