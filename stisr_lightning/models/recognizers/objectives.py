"""Recognizers' own training objectives on teacher-forced sequence logits (ABINet's CE, ASTER's NLL); TextSR and
LEMMA reuse them as loss terms (`losses/recognition.py`)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def sequence_cross_entropy(logits: Tensor, targets: Tensor, official_double_softmax: bool = False) -> Tensor:
    """Mean CE over every step of (N, T, C) logits against (N, T) ids, padded steps included.

    `official_double_softmax` feeds softmax probabilities to the CE as LEMMA's code does (a softmax applied twice),
    which flattens the gradient; the default is the paper's CE on logits.
    """
    scores = logits.softmax(-1) if official_double_softmax else logits
    return F.cross_entropy(scores.flatten(0, 1), targets.to(logits.device).flatten())


def sequence_nll(logits: Tensor, targets: Tensor, lengths: Tensor, average: Literal["word", "token"] = "word") -> Tensor:
    """-sum_t log p(y_t) over each word's first `lengths` steps (EOS included) of (N, T, C) teacher-forced logits.

    `average="word"` is TextSR's Eq. 3 (the sum over the steps of a word), averaged over the batch, which is also
    aster.pytorch's `SequenceCrossEntropyLoss` as ASTER trains with it (`sample_normalize=True`); `"token"` divides
    by the number of tokens instead (its `sequence_normalize=True` option).
    """
    targets, lengths = targets.to(logits.device), lengths.to(logits.device)
    steps = torch.arange(targets.shape[1], device=logits.device)
    mask = (steps[None, :] < lengths[:, None]).to(logits.dtype)
    picked = logits.log_softmax(-1).gather(-1, targets[..., None].long()).squeeze(-1)
    total = -(picked * mask).sum()
    return total / (mask.sum() if average == "token" else logits.shape[0])
