"""Word accuracy and normalized edit distance under the TextZoom protocol, plus its subset-size-weighted average.

Predictions and labels are compared after `filter_text(., text_filter)`: by default 'lower' (TextZoom: lower-cased,
only [0-9a-z] kept), 'unicode' for data in other scripts. States are sums, so the result is exact under DDP.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from stisr_lightning.data.charset import filter_text


def _filtered_pairs(preds: list[str], targets: list[str], metric: str, level: str) -> tuple[list[str], list[str]]:
    if len(preds) != len(targets):
        raise ValueError(f"{metric}: got {len(preds)} predictions for {len(targets)} targets")
    return [filter_text(p, level) for p in preds], [filter_text(t, level) for t in targets]


def _encode(texts: list[str], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (N, L) code points padded with `pad`, and their lengths."""
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    codes = np.full((len(texts), max(int(lengths.max(initial=0)), 1)), pad, dtype=np.int64)
    for row, text in enumerate(texts):
        codes[row, : len(text)] = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return codes, lengths


def levenshtein(preds: list[str], targets: list[str]) -> np.ndarray:
    """Edit distances of many pairs at once: the DP runs over prediction positions, vectorized over pairs and target
    positions (the insertion chain along a row is a running minimum)."""
    pred_codes, pred_lengths = _encode(preds, pad=-1)
    target_codes, target_lengths = _encode(targets, pad=-2)
    columns = np.arange(target_codes.shape[1] + 1)
    rows = np.arange(len(preds))
    row = np.broadcast_to(columns, (len(preds), columns.size)).copy()
    distance = target_lengths.copy()  # pairs with an empty prediction
    for i in range(1, int(pred_lengths.max(initial=0)) + 1):
        mismatch = pred_codes[:, i - 1 : i] != target_codes
        best = np.empty_like(row)
        best[:, 0] = i
        best[:, 1:] = np.minimum(row[:, :-1] + mismatch, row[:, 1:] + 1)
        row = np.minimum.accumulate(best - columns, axis=1) + columns
        done = pred_lengths == i
        distance[done] = row[rows[done], target_lengths[done]]
    return distance


class WordAccuracy(Metric):
    """Exact-match accuracy after `filter_text(., text_filter)`; empty labels stay in the denominator."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, text_filter: str = "lower", **kwargs) -> None:
        super().__init__(**kwargs)
        filter_text("", text_filter)  # an unknown level fails here, naming it
        self.text_filter = text_filter
        self.add_state("correct", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, preds: list[str], targets: list[str]) -> None:
        preds, targets = _filtered_pairs(preds, targets, "WordAccuracy", self.text_filter)
        self.correct += sum(p == t for p, t in zip(preds, targets))
        self.total += len(targets)

    def compute(self) -> Tensor:
        return self.correct / self.total


class NormalizedEditDistance(Metric):
    """Mean of 1 - ED(pred, gt) / max(len(pred), len(gt)) after the same filtering; higher is better, and a pair of
    two empty strings scores 1."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, text_filter: str = "lower", **kwargs) -> None:
        super().__init__(**kwargs)
        filter_text("", text_filter)
        self.text_filter = text_filter
        self.add_state("score", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, preds: list[str], targets: list[str]) -> None:
        preds, targets = _filtered_pairs(preds, targets, "NormalizedEditDistance", self.text_filter)
        if not targets:
            return
        distance = levenshtein(preds, targets)
        longest = np.maximum([len(p) for p in preds], [len(t) for t in targets])
        scores = 1.0 - distance / np.maximum(longest, 1)
        self.score += float(scores.sum())
        self.total += len(targets)

    def compute(self) -> Tensor:
        return (self.score / self.total).float()


def weighted_average(values: dict[str, float], sizes: dict[str, int]) -> float:
    """Average of per-subset values weighted by subset size (TextZoom: 1619 easy, 1411 medium, 1343 hard)."""
    if set(values) != set(sizes):
        raise ValueError(f"weighted_average: subsets differ, values {sorted(values)} vs sizes {sorted(sizes)}")
    total = sum(sizes.values())
    if total <= 0:
        raise ValueError(f"weighted_average: total size must be positive, got sizes {sizes}")
    return sum(values[name] * sizes[name] for name in values) / total
