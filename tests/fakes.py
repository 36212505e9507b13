"""Deterministic stand-ins for tests whose expected numbers must be computable by hand."""

import json
from pathlib import Path

import torch
from torch import Tensor

from stisr_lightning.models.recognizers.base import Recognizer


class BrightnessRecognizer(Recognizer):
    """Reads "a" from bright images and "b" from dark ones."""

    name = "brightness"
    charset = "ab"

    def read(self, images: Tensor) -> list[str]:
        return ["a" if value > 0.5 else "b" for value in images.mean(dim=(1, 2, 3)).tolist()]


def random_official_state(manifest: Path, seed: int, scale: float = 0.02) -> dict[str, Tensor]:
    """Random tensors with exactly the keys, shapes and dtypes of an official checkpoint manifest
    (../shared/reference/official_checkpoints/*.json); integer buffers (BN counters) get small integers."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in json.loads(Path(manifest).read_text())["keys"]:
        if dtype == "torch.int64":
            state[key] = torch.randint(0, 100, shape, generator=generator)
        else:
            state[key] = torch.randn(shape, generator=generator) * scale
    return state
