"""Recognition losses: LEMMA's fine-tune cross-entropy of the ABINet prior (L_ft), the teacher-forced sequence
loss of attention recognizers (ASTER), and TextSR's Text Perceptual Loss and adversarial term built on them."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from stisr_lightning.losses.base import LossTerm
from stisr_lightning.models.recognizers.prior import TextPrior

CHARSET_36 = "abcdefghijklmnopqrstuvwxyz1234567890"
"""ABINet's `charset_36.txt` in class order; class 0 is the null token (padding and end of text)."""
_CHARSET_36_IDS = {ch: i + 1 for i, ch in enumerate(CHARSET_36)}


def abinet_label_ids(labels: list[str], max_length: int = 25) -> Tensor:
    """(N, max_length + 1) class ids of the lower-cased labels, null-padded, as ABINet's `CharsetMapper.get_labels`.

    Characters outside a-z0-9 become null (id 0) in place, as in LEMMA; labels longer than `max_length` are cut so
    the last step is always null.
    """
    rows = [[_CHARSET_36_IDS.get(ch, 0) for ch in label.lower()[:max_length]] for label in labels]
    padded = [row + [0] * (max_length + 1 - len(row)) for row in rows]
    return torch.tensor(padded, dtype=torch.long).view(-1, max_length + 1)


def sequence_cross_entropy(logits: Tensor, targets: Tensor, official_double_softmax: bool = False) -> Tensor:
    """Mean CE over every step of (N, T, C) logits against (N, T) ids, padded steps included.

    `official_double_softmax` feeds softmax probabilities to the CE as LEMMA's code does (a softmax applied twice),
    which flattens the gradient; the default is the paper's CE on logits.
    """
    scores = logits.softmax(-1) if official_double_softmax else logits
    return F.cross_entropy(scores.flatten(0, 1), targets.to(logits.device).flatten())


class PriorFineTuneCE(LossTerm):
    """L_ft = CE(vision logits) + CE(language logits) of the text prior (`outputs["prior"]`) against the labels."""

    def __init__(self, official_double_softmax: bool = False, max_length: int = 25) -> None:
        super().__init__()
        self.official_double_softmax = official_double_softmax
        self.max_length = max_length

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        prior = outputs.get("prior")
        if not isinstance(prior, TextPrior):
            raise ValueError(f"PriorFineTuneCE: outputs['prior'] must be a TextPrior, got {type(prior).__name__}")
        targets = abinet_label_ids(list(batch["label"]), self.max_length)
        return sum(
            sequence_cross_entropy(logits, targets, self.official_double_softmax)
            for logits in (prior.vision_logits, prior.language_logits)
        )


def sequence_nll(logits: Tensor, targets: Tensor, lengths: Tensor, average: Literal["word", "token"] = "word") -> Tensor:
    """-sum_t log p(y_t) over each word's first `lengths` steps (EOS included) of (N, T, C) teacher-forced logits.

    `average="word"` is TextSR's Eq. 3 (the sum over the steps of a word), averaged over the batch; `"token"`
    divides by the number of tokens instead, as aster.pytorch's `SequenceCrossEntropyLoss` does.
    """
    targets, lengths = targets.to(logits.device), lengths.to(logits.device)
    steps = torch.arange(targets.shape[1], device=logits.device)
    mask = (steps[None, :] < lengths[:, None]).to(logits.dtype)
    picked = logits.log_softmax(-1).gather(-1, targets[..., None].long()).squeeze(-1)
    total = -(picked * mask).sum()
    return total / (mask.sum() if average == "token" else logits.shape[0])


class TextPerceptualLoss(LossTerm):
    """TextSR's TPL: the recognition loss of the SR image (`outputs["tpl_logits"]`, teacher-forced by the system
    on `outputs["tpl_targets"]` with `outputs["tpl_lengths"]`), which the generator minimizes (Eq. 4)."""

    def __init__(self, average: Literal["word", "token"] = "word") -> None:
        super().__init__()
        if average not in ("word", "token"):
            raise ValueError(f"TextPerceptualLoss.average: expected 'word' or 'token', got {average!r}")
        self.average = average

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        return sequence_nll(outputs["tpl_logits"], outputs["tpl_targets"], outputs["tpl_lengths"], self.average)


class AdversarialLoss(LossTerm):
    """The generator's side of SRGAN's min-max game, -log D(G(x)) (the non-saturating form), on the discriminator's
    logits for the SR images (`outputs["fake_logits"]`)."""

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        fake = outputs["fake_logits"]
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
