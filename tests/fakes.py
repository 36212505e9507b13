"""Deterministic stand-ins for tests whose expected numbers must be computable by hand."""

from torch import Tensor

from stisr_lightning.models.recognizers.base import Recognizer


class BrightnessRecognizer(Recognizer):
    """Reads "a" from bright images and "b" from dark ones."""

    name = "brightness"
    charset = "ab"

    def read(self, images: Tensor) -> list[str]:
        return ["a" if value > 0.5 else "b" for value in images.mean(dim=(1, 2, 3)).tolist()]
