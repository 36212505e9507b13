"""Frechet distance in a text recognizer's feature space (key `fid_text`).

This is not Inception FID: the features come from a recognizer (or any images -> (N, D) callable), so the numbers
are comparable only between runs that use the same feature extractor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from stisr_lightning.models.recognizers.base import RecognitionOutput

PROBE_SIZE = (3, 32, 128)
"""Image size used to find the feature dimension when it is not given."""


class RecognizerFeatures(nn.Module):
    """images (N, C>=3, H, W) in [0, 1] -> (N, D) features, without gradients.

    The extractor is borrowed, not owned: it is kept out of this module's parameters and state_dict (the system that
    holds the recognizer saves and moves it), so put it on the images' device yourself.
    """

    def __init__(self, extractor: Callable[[Tensor], Tensor | RecognitionOutput], num_features: int | None = None):
        super().__init__()
        self._extractor = (extractor,)  # a tuple keeps nn.Module from registering it as a submodule
        self.num_features = num_features if num_features is not None else self._probe_dimension()

    def _probe_dimension(self) -> int:
        extractor = self._extractor[0]
        was_training = getattr(extractor, "training", False)
        if isinstance(extractor, nn.Module):
            extractor.eval()
            device = next(extractor.parameters(), torch.empty(0)).device
        else:
            device = torch.device("cpu")
        try:
            features = self(torch.rand(2, *PROBE_SIZE, device=device))
        finally:
            if isinstance(extractor, nn.Module):
                extractor.train(was_training)
        return features.shape[-1]

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            output = self._extractor[0](images[:, :3].clamp(0, 1))
        features = output.features if isinstance(output, RecognitionOutput) else output
        if not isinstance(features, Tensor) or features.dim() != 2:
            raise ValueError(
                "TextFeatureFID: the extractor must return (N, D) features or a RecognitionOutput with features, got "
                f"{type(features).__name__}{'' if not isinstance(features, Tensor) else tuple(features.shape)}"
            )
        return features


class TextFeatureFID(FrechetInceptionDistance):
    """torchmetrics' Frechet distance with a recognizer as the feature network.

    `update(images, real=True/False)` with RGB(+mask) images in [0, 1]; `compute()` needs at least two images of each.
    """

    def __init__(
        self,
        extractor: Callable[[Tensor], Tensor | RecognitionOutput],
        num_features: int | None = None,
        reset_real_features: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(
            feature=RecognizerFeatures(extractor, num_features), reset_real_features=reset_real_features, **kwargs
        )
