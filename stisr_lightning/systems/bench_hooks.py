"""What `stisr-bench train` calls on a system: one training update by hand (outside Lightning), and the parts of a
training step that it times alone. A system whose step is not one loss and one optimizer overrides both (TextSR: its
GAN iteration and its TPL)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class BenchHooks:
    """A mixin for systems with `loss`, `generator` and `forward_train`."""

    def manual_update(self, batch: dict[str, Any], optimizers: list[torch.optim.Optimizer],
                      gradient_clip_val: float | None) -> None:
        """One training update by hand, as the Trainer runs it."""
        (optimizer,) = optimizers
        optimizer.zero_grad(set_to_none=True)
        total, _ = self.loss(self.forward_train(batch), batch)
        total.backward()
        if gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
        optimizer.step()

    def step_parts(self, batch: dict[str, Any]) -> dict[str, Callable[[], None]]:
        """Parts of a training step timed alone, to report their share of the step: the generator's own (its
        `step_parts`, e.g. a text prior) and each loss term that runs a recognizer."""
        parts = dict(self.generator.step_parts(batch["lr"])) if hasattr(self.generator, "step_parts") else {}
        terms = {name: term for name, term in self.loss.terms.items()
                 if getattr(term, "recognizer", None) is not None and self.loss.weights[name] != 0}
        if terms:  # one forward for all of them; each term's backward stops at these detached outputs
            outputs = {key: value.detach().requires_grad_(value.is_floating_point()) if torch.is_tensor(value) else value
                       for key, value in self.forward_train(batch).items()}
            for name, term in terms.items():
                parts[f"{name} loss"] = lambda term=term: term(outputs, batch).backward()
        return parts
