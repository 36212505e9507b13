"""What a text-prior recognizer hands to a generator (LEMMA's guidance branch, and any attention-based recognizer
that can stand in for ABINet, as LEMMA's authors suggest)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class TextPrior:
    attention: Tensor
    """(N, T, H, W) per-step character attention maps on the LR feature grid (LEMMA: 26 x 16 x 64), each step
    softmax-normalized over H*W before any resizing."""
    vision_logits: Tensor
    """(N, T, C) the vision model's per-step logits (C = 37 for ABINet's charset_36 + null)."""
    language_logits: Tensor
    """(N, T, C) the language model's per-step logits: the text distribution fed to the alignment module."""
    lengths: Tensor
    """(N,) long: predicted sequence length including the end (null) token, clamped to [2, T]."""
