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

    def read(self, images: Tensor) -> list[str]:
        """Return one string per image; images are (N, 3, H, W) RGB in [0, 1]."""
        raise NotImplementedError

    def freeze(self) -> Recognizer:
        """Exclude from training: eval mode (BN/dropout fixed) and no gradients to its own weights."""
        self.eval()
        for param in self.parameters():
            param.requires_grad_(False)
        self.frozen = True
        return self

    def train(self, mode: bool = True) -> Recognizer:
        # A frozen recognizer stays in eval mode even when the system around it is set to train().
        return super().train(mode and not getattr(self, "frozen", False))


class TorchRecognizer(Recognizer):
    """A differentiable recognizer: `forward(images) -> RecognitionOutput`, `decode(logits) -> strings`."""

    differentiable = True

    def preprocess(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, images: Tensor) -> RecognitionOutput:
        raise NotImplementedError

    def decode(self, logits: Tensor) -> list[str]:
        raise NotImplementedError

    @torch.no_grad()
    def read(self, images: Tensor) -> list[str]:
        return self.decode(self(images).logits)


def ctc_greedy_decode(logits: Tensor, charset: str, blank: int = 0) -> list[str]:
    """Best-path CTC decoding, vectorized: argmax, collapse repeats, drop blanks; class k>blank maps to charset[k-1]."""
    best = logits.argmax(-1)  # (N, T)
    repeated = torch.zeros_like(best, dtype=torch.bool)
    repeated[:, 1:] = best[:, 1:] == best[:, :-1]
    keep = (best != blank) & ~repeated
    best, keep = best.cpu().tolist(), keep.cpu().tolist()
    return ["".join(charset[k - 1] for k, ok in zip(row, mask) if ok) for row, mask in zip(best, keep)]


def strip_prefix(state_dict: dict[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Remove a DataParallel-style prefix from every key that has it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def load_state_dict_strict(module: nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """Load with a one-line error that names the file and lists missing and unexpected keys."""
    result = module.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        missing = ", ".join(result.missing_keys[:8]) + (" ..." if len(result.missing_keys) > 8 else "")
        unexpected = ", ".join(result.unexpected_keys[:8]) + (" ..." if len(result.unexpected_keys) > 8 else "")
        raise ValueError(
            f"{source}: checkpoint does not match {type(module).__name__} "
            f"(missing {len(result.missing_keys)}: [{missing}]; unexpected {len(result.unexpected_keys)}: [{unexpected}])"
        )
