"""A loss as a named, weighted sum of terms, so every ablation of a loss is a config change."""

from typing import Any

import torch
from torch import Tensor, nn

from stisr_lightning.losses.base import LossTerm


class LossMix(nn.Module):
    """total = scale * sum_i weights[i] * terms[i]; each unweighted term is returned for logging.

    `scale` exists because the official TextZoom-family code multiplies the whole loss by 100 before backward;
    with Adam this only matters together with gradient clipping, so it is part of the recipe.
    """

    def __init__(self, terms: dict[str, LossTerm], weights: dict[str, float] | None = None, scale: float = 1.0):
        super().__init__()
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(terms))
        if unknown:
            raise ValueError(f"LossMix.weights: {unknown[0]!r} is not a loss term (terms: {sorted(terms)})")
        if not terms:
            raise ValueError("LossMix.terms: at least one loss term is required")
        self.terms = nn.ModuleDict(terms)
        self.weights = {name: float(weights.get(name, 1.0)) for name in terms}
        self.scale = scale

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        values = {name: term(outputs, batch) for name, term in self.terms.items() if self.weights[name] != 0.0}
        total = torch.stack([self.weights[name] * value for name, value in values.items()]).sum() * self.scale
        return total, {name: value.detach() for name, value in values.items()}
