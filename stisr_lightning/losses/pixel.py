"""Pixel-space losses of the TextZoom family (TSRN/TATT `ImageLoss`)."""

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from stisr_lightning.losses.base import LossTerm


class PixelMSE(LossTerm):
    """Mean squared error over every channel, the mask channel included (as the official ImageLoss does)."""

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        return F.mse_loss(outputs["sr"], batch["hr"])


class PixelL1(LossTerm):
    """Mean absolute error on the RGB channels (the diffusion papers' image term, e.g. TextResShift's L_L1)."""

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        return F.l1_loss(outputs["sr"][:, :3], batch["hr"][:, :3])


def gradient_field(images: Tensor) -> Tensor:
    """Gradient magnitude from central differences against zero-padded neighbours, as TSRN's gradient prior."""
    padded = F.pad(images, (1, 1, 1, 1))
    right, left = padded[..., 1:-1, 2:], padded[..., 1:-1, :-2]
    bottom, top = padded[..., 2:, 1:-1], padded[..., :-2, 1:-1]
    return torch.sqrt(((right - left) / 2) ** 2 + ((top - bottom) / 2) ** 2 + 1e-6)


class GradientPriorLoss(LossTerm):
    """L1 between the gradient fields of SR and HR on the RGB channels (TSRN's gradient prior loss)."""

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        return F.l1_loss(gradient_field(outputs["sr"][:, :3]), gradient_field(batch["hr"][:, :3]))
