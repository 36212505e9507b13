"""The Recognizer interface (DESIGN.md contract 6).

Every recognizer takes RGB images in [0, 1] shaped (N, 3, H, W) at any size and owns the rest of its preprocessing
(resize, gray/RGB, normalization), so systems and metrics never need to know which recognizer they hold.

Two kinds exist:
- `Recognizer`: can only read (Tesseract, onnxruntime engines). Evaluation only.
- `TorchRecognizer`: a differentiable nn.Module. `forward` returns a `RecognitionOutput` with logits (and attention
  maps and features where the architecture has them), so it can drive losses (text perceptual loss, CE, text-focus)
  and feature-based metrics (text-feature FID).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class RecognitionOutput:
    logits: Tensor
    """(N, T, C) scores per decoding step, before softmax."""
    attention: Tensor | None = None
    """Attention maps where the recognizer has them, e.g. (N, T, H', W')."""
    features: Tensor | None = None
    """(N, D) pooled visual features, used by feature-space metrics (text-feature FID)."""


class Recognizer(nn.Module):
    """Reads text from images. Subclasses set `name` and `charset` and implement `read`."""

    name: str = "recognizer"
    charset: str = ""
    """Characters the recognizer can output, in class order (without blank/end/padding symbols)."""
    differentiable: bool = False
    frozen: bool = False
    ships_weights: bool = True
    """The reader holds trained weights when built (an engine or package-shipped file); a torch architecture built
    from its class holds random ones until a weights file is loaded."""

    def read(self, images: Tensor) -> list[str]:
        """Return one string per image; images are (N, 3, H, W) RGB in [0, 1]."""
        raise NotImplementedError

    def freeze(self) -> Recognizer:
        """Exclude from training: eval mode (BN/dropout fixed; RNN layers without dropout excepted, see `train`) and
        no gradients to its own weights. Lightning keeps each module's mode as it finds it at fit start."""
        for param in self.parameters():
            param.requires_grad_(False)
        self.frozen = True
        return self.train()

    def train(self, mode: bool = True) -> Recognizer:
        """A frozen recognizer stays in eval mode when the system around it is set to train(), except its recurrent
        layers without dropout: they compute the same in either mode, and cuDNN runs backward through an RNN only in
        training mode, which a recognition loss needs to reach the SR image through the frozen reader on a GPU."""
        super().train(mode and not self.frozen)
        if mode and self.frozen:
            for module in self.modules():
                if isinstance(module, nn.RNNBase) and module.dropout == 0:
                    module.train()
        return self


class TorchRecognizer(Recognizer):
    """A differentiable recognizer: `forward(images) -> RecognitionOutput`, `decode(logits) -> strings`."""

    differentiable = True
    ships_weights = False

    def preprocess(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, images: Tensor) -> RecognitionOutput:
        raise NotImplementedError

    def decode(self, logits: Tensor) -> list[str]:
        raise NotImplementedError

    def training_loss(self, images: Tensor, labels: list[str]) -> Tensor:
        """The recognizer's own training objective, used by the suite's recognizer recipes."""
        raise NotImplementedError(f"{type(self).__name__} has no training objective")

    beam_width: int = 1
    """Attention decoders with a beam search (ASTER, CDistNet) set it and implement `encode(images)`,
    `beam_search(features, beam_width) -> ids` and `ids_to_text(ids)`; `forward` stays greedy and differentiable."""

    def read_tokens(self, images: Tensor, max_length: int) -> tuple[Tensor, Tensor]:
        """What a text-conditioned generator reads from an image: (N, max_length) class ids (0 = no character, as
        the CTC blank) and each character's probability, its confidence (0 where there is no character)."""
        raise NotImplementedError(f"{type(self).__name__} does not read tokens with confidences")

    @torch.no_grad()
    def read(self, images: Tensor) -> list[str]:
        if self.beam_width > 1:
            return self.ids_to_text(self.beam_search(self.encode(images), self.beam_width))
        return self.decode(self(images).logits)


def encode_labels(labels: list[str], charset: str, lowercase: bool) -> tuple[Tensor, Tensor]:
    """Concatenated CTC targets (class = charset index + 1) and their lengths; characters outside the charset are
    dropped, as the TextZoom protocol filters labels before comparing."""
    index = {ch: i + 1 for i, ch in enumerate(charset)}
    encoded = [[index[ch] for ch in (label.lower() if lowercase else label) if ch in index] for label in labels]
    lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
    return torch.tensor([c for e in encoded for c in e], dtype=torch.long), lengths


def ctc_loss(logits: Tensor, labels: list[str], charset: str) -> Tensor:
    """CTC on (N, T, 1 + len(charset)) logits, blank = class 0; a lower-case charset matches labels case-blind."""
    targets, target_lengths = encode_labels(labels, charset, lowercase=charset == charset.lower())
    log_probs = logits.log_softmax(-1).permute(1, 0, 2)  # (T, N, C)
    input_lengths = torch.full((log_probs.shape[1],), log_probs.shape[0], dtype=torch.long)
    return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, zero_infinity=True)


def ctc_greedy_tokens(logits: Tensor, max_length: int, blank: int = 0) -> tuple[Tensor, Tensor]:
    """Best-path CTC as fixed-size tensors, with no host sync: the kept classes (argmax, repeats collapsed, blanks
    dropped) packed left into (N, max_length), padded with `blank`, and the softmax probability of the frame each
    came from; characters past `max_length` are dropped."""
    confidence, best = logits.float().softmax(-1).max(-1)  # (N, T)
    repeated = torch.zeros_like(best, dtype=torch.bool)
    repeated[:, 1:] = best[:, 1:] == best[:, :-1]
    keep = (best != blank) & ~repeated
    position = keep.long().cumsum(1) - 1
    slot = torch.where(keep & (position < max_length), position, max_length)  # column max_length collects the rest
    ids = best.new_full((best.shape[0], max_length + 1), blank).scatter_(1, slot, torch.where(keep, best, blank))
    scores = confidence.new_zeros(ids.shape).scatter_(1, slot, torch.where(keep, confidence, 0.0))
    return ids[:, :max_length], scores[:, :max_length]


def ctc_greedy_decode(logits: Tensor, charset: str, blank: int = 0) -> list[str]:
    """Best-path CTC decoding, vectorized: argmax, collapse repeats, drop blanks; class k>blank maps to charset[k-1]."""
    best = logits.argmax(-1)  # (N, T)
    repeated = torch.zeros_like(best, dtype=torch.bool)
    repeated[:, 1:] = best[:, 1:] == best[:, :-1]
    keep = (best != blank) & ~repeated
    best, keep = best.cpu().tolist(), keep.cpu().tolist()
    return ["".join(charset[k - 1] for k, ok in zip(row, mask) if ok) for row, mask in zip(best, keep)]
