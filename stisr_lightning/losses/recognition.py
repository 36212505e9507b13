"""Recognition losses: LEMMA's fine-tune cross-entropy of the ABINet prior (L_ft), the teacher-forced sequence
loss of attention recognizers (ASTER), TextSR's Text Perceptual Loss and adversarial term built on them, and a
generic frozen-reader loss that any generator can add."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from stisr_lightning.data.charset import abinet_label_ids
from stisr_lightning.losses.base import LossTerm
from stisr_lightning.models.recognizers.base import TorchRecognizer
from stisr_lightning.models.recognizers.objectives import sequence_cross_entropy, sequence_nll
from stisr_lightning.models.recognizers.prior import TextPrior
from stisr_lightning.weights import frozen_loss_recognizer


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


class RecognitionLoss(LossTerm):
    """A frozen reader's own training objective (CTC for CRNN-type readers) on the SR image against the label: the
    generator learns to draw text that a reader reads as the label, the idea behind the text-aware losses of TPGSR
    and TextSR's TPL, for any generator. The judging reader should not also fill a column of the table (its column
    would then not be an independent measure); the suite's `easyocr` fills none.

    Args:
        recognizer: a differentiable reader; frozen here.
        recognizer_weights: its weights file; None for a reader that ships its weights (EasyOCR, PP-OCR torch).
    """

    def __init__(self, recognizer: TorchRecognizer, recognizer_weights: str | None = None) -> None:
        super().__init__()
        if recognizer_weights is None and recognizer.ships_weights:
            self.recognizer = recognizer.freeze()
        else:
            self.recognizer = frozen_loss_recognizer(recognizer, recognizer_weights, "RecognitionLoss",
                                                     "give the reader's weights file")

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        return self.recognizer.training_loss(outputs["sr"][:, :3], list(batch["label"]))


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
