"""Feature-space losses: SRGAN's content loss (Ledig et al. 2017; MSE between VGG19 feature maps of SR and HR, which
TextSR inherits) and LPIPS (Zhang et al. 2018; ResShift's and TextResShift's perceptual term).

The ImageNet weights come from a file (by default where torchvision caches them) and are never downloaded: without
them a loss refuses to start, since distances in a random network's features would train towards nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import models

from stisr_lightning.losses.base import LossTerm
from stisr_lightning.weights import pretrained_lpips

VGG_LAYERS = {"2_2": 9, "5_4": 36}
"""SRGAN's VGG22 and VGG54: the features after the ReLU of conv2_2 / conv5_4 (before the next max-pooling)."""
FEATURE_RESCALE = 1 / 12.75
"""SRGAN rescales the VGG feature maps by this factor so the loss is on the order of the pixel MSE."""
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def vgg19_weights_path() -> Path:
    """Where torchvision keeps VGG19's ImageNet weights (`<torch hub dir>/checkpoints/vgg19-dcbb9e9d.pth`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / models.VGG19_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]


class VGGPerceptualLoss(LossTerm):
    """MSE between rescaled VGG19 features of SR and HR (RGB channels, ImageNet-normalized); the network is frozen.

    Args:
        layer: "5_4" (VGG54, SRGAN's choice and the default) or "2_2" (VGG22).
        weights: a torchvision VGG19 state dict file; default: torchvision's cache file.
    """

    def __init__(self, layer: Literal["2_2", "5_4"] = "5_4", weights: str | None = None) -> None:
        super().__init__()
        if layer not in VGG_LAYERS:
            raise ValueError(f"VGGPerceptualLoss.layer: expected one of {sorted(VGG_LAYERS)}, got {layer!r}")
        path = Path(weights) if weights else vgg19_weights_path()
        if not path.is_file():
            raise FileNotFoundError(f"VGGPerceptualLoss: no VGG19 ImageNet weights at {path} (copy vgg19-dcbb9e9d.pth "
                                    "there, or set weights:); nothing is downloaded")
        vgg = models.vgg19()
        vgg.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.features = vgg.features[: VGG_LAYERS[layer]].requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        super().train(mode)
        self.features.eval()
        return self

    def embed(self, images: Tensor) -> Tensor:
        return self.features((images[:, :3] - self.mean) / self.std) * FEATURE_RESCALE

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        with torch.no_grad():
            target = self.embed(batch["hr"])
        return F.mse_loss(self.embed(outputs["sr"]), target)


class LPIPSLoss(LossTerm):
    """Mean LPIPS distance between SR and HR (RGB in [0, 1]), differentiable in SR; the network is frozen.

    Args:
        net: the `lpips` package's backbone ("vgg": ResShift's LPIPS-VGG).
    """

    def __init__(self, net: Literal["alex", "vgg", "squeeze"] = "vgg") -> None:
        super().__init__()
        self.net = pretrained_lpips(net)

    def train(self, mode: bool = True) -> LPIPSLoss:
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        return self.net(outputs["sr"][:, :3], batch["hr"][:, :3], normalize=True).mean()
