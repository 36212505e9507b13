"""LPIPS (Zhang et al., 2018) through the `lpips` package, only ever with its pretrained ImageNet backbone.

The backbone weights come from the torch hub cache and are never downloaded here. Without them the metric is
`available = False` and reports NaN: a score from a randomly initialised backbone would look valid and mean nothing.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from stisr_lightning.weights import lpips_backbone_path, pretrained_lpips


class LPIPS(Metric):
    """Mean LPIPS distance (lower is better) between SR and HR on the RGB channels clamped to [0, 1], per image.

    LEMMA logs LPIPS-VGG; `net` picks the backbone of the `lpips` package.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, net: Literal["alex", "vgg", "squeeze"] = "vgg", **kwargs) -> None:
        super().__init__(**kwargs)
        self.weights_path = lpips_backbone_path(net)
        self.available = self.weights_path.is_file()
        self.net = pretrained_lpips(net) if self.available else None
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def train(self, mode: bool = True) -> LPIPS:
        # The lpips heads contain dropout; the network stays in eval mode whatever the system around it does.
        super().train(mode)
        if self.net is not None:
            self.net.eval()
        return self

    def update(self, sr: Tensor, hr: Tensor) -> None:
        if sr.shape != hr.shape or sr.dim() != 4 or sr.shape[1] < 3:
            raise ValueError(
                f"LPIPS: expected two (N, C>=3, H, W) tensors of one shape, got {tuple(sr.shape)} and {tuple(hr.shape)}"
            )
        if self.net is None:
            return
        with torch.no_grad():
            distance = self.net(sr[:, :3].float().clamp(0, 1), hr[:, :3].float().clamp(0, 1), normalize=True)
        self.total += distance.double().sum()
        self.count += sr.shape[0]

    def compute(self) -> Tensor:
        if not self.available:
            return torch.tensor(float("nan"), device=self.total.device)
        return (self.total / self.count).float()
