"""The loss-term contract: every term reads what it needs from the system's outputs and the batch.

`outputs` always holds "sr" (the generator's output, same channels as the batch images); systems add what their
terms need (recognizer attention maps, text priors, diffusion predictions) under documented keys.
"""

from typing import Any

from torch import Tensor, nn


class LossTerm(nn.Module):
    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        raise NotImplementedError
