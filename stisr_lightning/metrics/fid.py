"""Frechet distances between SR and HR images: Inception FID (key `fid`) and the recognizer-feature `fid_text`.

`fid_text` is not Inception FID: its features come from a recognizer (or any images -> (N, D) callable), so its
numbers are comparable only between runs that use the same feature extractor.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchvision.models import Inception_V3_Weights
from torchvision.models.inception import Inception3

from stisr_lightning.models.recognizers.base import RecognitionOutput
from stisr_lightning.weights import load_state_dict_strict

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


INCEPTION_SIZE = (299, 299)
POOL3_LAYERS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool",
)
"""torchvision's Inception-v3 up to the final average pool ("pool3"): pytorch-fid's blocks 0-3."""


def inception_weights_path() -> Path:
    """Where torchvision keeps its ImageNet Inception-v3 (`<torch hub dir>/checkpoints/inception_v3_google-...pth`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Inception_V3_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]


class InceptionPool3(Inception3):
    """images (N, 3, H, W) in [0, 1] -> (N, 2048) pool3 features, as pytorch-fid's `InceptionV3` computes them with
    `use_fid_inception=False`: bilinear resize to 299x299 (align_corners=False), scale to [-1, 1] (the range the
    Google weights were trained on; torchvision's `transform_input` reaches the same from ImageNet normalisation).

    Keys are torchvision's, so its released file loads strictly. Always in eval mode: batch norm must use the
    trained running statistics whatever the system around it does.
    """

    num_features = 2048

    def __init__(self) -> None:
        super().__init__(num_classes=1000, aux_logits=True, transform_input=False, init_weights=False)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> InceptionPool3:
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        x = 2 * F.interpolate(images, size=INCEPTION_SIZE, mode="bilinear", align_corners=False) - 1
        with torch.no_grad():
            for name in POOL3_LAYERS:
                x = getattr(self, name)(x)
        return x.flatten(1)


def cached_inception_pool3() -> InceptionPool3 | None:
    """torchvision's ImageNet Inception-v3 from the torch hub cache, or None when the file is not there; never
    downloads (Frechet distances in a random network's features would look valid and mean nothing)."""
    path = inception_weights_path()
    if not path.is_file():
        return None
    network = InceptionPool3()
    load_state_dict_strict(network, torch.load(path, map_location="cpu", weights_only=True), str(path))
    return network


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)) in float64, as pytorch-fid's
    `calculate_frechet_distance`: scipy's `sqrtm`; a non-finite root is retried with `eps` added to both diagonals;
    an imaginary residue is dropped when the root's diagonal is real within 1e-3, an error otherwise."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"frechet_distance: means {mu1.shape} / {mu2.shape} and covariances {sigma1.shape} / "
                         f"{sigma2.shape} do not describe two Gaussians of one dimension")
    root = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        warnings.warn(f"frechet_distance: singular covariance product; adding {eps} to the diagonals", stacklevel=2)
        offset = np.eye(len(mu1)) * eps
        root = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            residue = np.max(np.abs(root.imag))
            raise ValueError(f"frechet_distance: imaginary component {residue} in sqrt(sigma1 sigma2)")
        root = root.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))


class InceptionFID(Metric):
    """FID (Heusel et al., 2017) between SR and HR images (key `fid`, lower is better), the TextResShift paper's FID.

    Follows pytorch-fid with torchvision's ImageNet Inception-v3 (`use_fid_inception=False`): 2048-d pool3 features,
    their mean and unbiased covariance in float64, then `frechet_distance`. pytorch-fid's default network is its
    TF-ported "FID Inception" (other weights, patched blocks), whose numbers differ from these. Without the cached
    torchvision weights the metric is `available = False` and reports NaN; with fewer than two images on a side the
    distance is undefined and NaN too.

    States are sums (features, outer products, counts), so the DDP reduction is exact. `features` replaces the
    network (any images -> (N, D) module); the test harness shares one `cached_inception_pool3()` among its sets.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, features: nn.Module | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.features = features if features is not None else cached_inception_pool3()
        self.available = self.features is not None
        dimension = self._probe_dimension() if self.available else 1
        for side in ("sr", "hr"):
            self.add_state(f"{side}_sum", torch.zeros(dimension, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer_sum", torch.zeros(dimension, dimension, dtype=torch.float64),
                           dist_reduce_fx="sum")
            self.add_state(f"{side}_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _probe_dimension(self) -> int:
        known = getattr(self.features, "num_features", None)
        return known if known is not None else self._extract(torch.rand(2, 3, 32, 128)).shape[-1]

    def _extract(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.features(images[:, :3].float().clamp(0, 1)).double()

    def _accumulate(self, side: str, features: Tensor) -> None:
        getattr(self, f"{side}_sum").add_(features.sum(0))
        getattr(self, f"{side}_outer_sum").add_(features.T @ features)
        getattr(self, f"{side}_count").add_(features.shape[0])

    def update(self, sr: Tensor, hr: Tensor) -> None:
        if sr.dim() != 4 or hr.dim() != 4 or sr.shape[1] < 3 or hr.shape[1] < 3:
            raise ValueError(f"InceptionFID: expected (N, C>=3, H, W) SR and HR images, got {tuple(sr.shape)} and "
                             f"{tuple(hr.shape)}")
        if self.available:
            self._accumulate("sr", self._extract(sr))
            self._accumulate("hr", self._extract(hr))

    def _gaussian(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        count = int(getattr(self, f"{side}_count"))
        mean = getattr(self, f"{side}_sum") / count
        covariance = (getattr(self, f"{side}_outer_sum") - count * torch.outer(mean, mean)) / (count - 1)
        return mean.cpu().numpy(), covariance.cpu().numpy()

    def compute(self) -> Tensor:
        device = self.sr_sum.device
        if not self.available:
            return torch.tensor(float("nan"), device=device)
        if min(int(self.sr_count), int(self.hr_count)) < 2:
            warnings.warn(f"InceptionFID: {int(self.sr_count)} SR / {int(self.hr_count)} HR images; a Frechet "
                          "distance needs at least 2 of each, reporting NaN", stacklevel=2)
            return torch.tensor(float("nan"), device=device)
        distance = frechet_distance(*self._gaussian("sr"), *self._gaussian("hr"))
        return torch.tensor(distance, dtype=torch.float64, device=device)
