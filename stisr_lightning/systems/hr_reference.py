"""The HR row of the papers' tables: the test images' own HR halves, read and measured like any model's output.

It is the ceiling a table's columns can reach with its readers (LEMMA Table 3: ASTER reads 86.6 % of TextZoom's HR),
and on the embedded default it shows how much room the stand-in readers leave above bicubic.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from stisr_lightning.systems.base import STISRSystem


class HRReference(STISRSystem):
    def super_resolve(self, lr: Tensor, batch: dict[str, Any] | None = None) -> Tensor:
        if batch is None or "hr" not in batch:
            raise ValueError("HRReference: reads the test pairs' HR images, so it has no output for an LR image alone")
        return batch["hr"]
