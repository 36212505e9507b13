"""A cascade: any generator's SR, clamped to [0, 1], refined by a second trained generator that can refine another's
output (one with `refine_output(sr, lr, num_inference_steps)`, e.g. TextDiff's MRD). `stisr-eval --refine-with` and
a sweep's `evaluate.refine_with` build it."""

from __future__ import annotations

from torch import Tensor, nn


def can_refine(generator: type | nn.Module) -> bool:
    return callable(getattr(generator, "refine_output", None))


class RefinedGenerator(nn.Module):
    def __init__(self, base: nn.Module, refiner: nn.Module, num_inference_steps: int | None = None) -> None:
        super().__init__()
        if not can_refine(refiner):
            raise ValueError(f"{type(refiner).__name__} cannot refine another generator's output (no refine_output)")
        self.base, self.refiner = base, refiner
        self.scale_factor = getattr(base, "scale_factor", getattr(refiner, "scale_factor", None))
        if self.scale_factor != getattr(refiner, "scale_factor", self.scale_factor):
            raise ValueError(f"cascade: base scale {self.scale_factor} != refiner scale {refiner.scale_factor}")
        self.num_inference_steps = num_inference_steps

    def forward(self, lr: Tensor) -> Tensor:
        return self.refiner.refine_output(self.base(lr)[:, :3].clamp(0, 1), lr, self.num_inference_steps)
