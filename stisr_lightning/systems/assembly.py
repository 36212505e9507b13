"""Parts of a system that its config names and that are set up once, before any stage: the recognizers with their
weights (evaluators frozen), and the submodules or methods to compile."""

from __future__ import annotations

import torch
from torch import nn

from stisr_lightning.models.recognizers.base import Recognizer
from stisr_lightning.weights import load_weights, report_untrained


def attach_recognizers(recognizers: dict[str, Recognizer] | None, weights: dict[str, str] | None,
                       fine_tuned: list[str], named: list[str]) -> nn.ModuleDict:
    """The named recognizers with their files loaded, a random one reported, and all but `fine_tuned` frozen.
    `named` are the names other arguments refer to: each must be configured."""
    recognizers, weights = nn.ModuleDict(recognizers or {}), dict(weights or {})
    for name in [*fine_tuned, *weights, *named]:
        if name not in recognizers:
            raise ValueError(f"recognizer {name!r} is not configured (recognizers: {sorted(recognizers)})")
    for name, path in weights.items():
        load_weights(recognizers[name], path, lightning_prefix="recognizer.")
    for name, recognizer in recognizers.items():
        if not (recognizer.ships_weights or name in weights or name in fine_tuned):
            report_untrained(f"recognizer {name!r} ({type(recognizer).__name__}) has no recognizer_weights, so it "
                             "reads with random weights; give the official file or one from the suite's recipes")
        if name not in fine_tuned:
            recognizer.freeze()
    return recognizers


def compile_target(root: nn.Module, target: str) -> tuple[nn.Module, str | None]:
    """(module, None) for a submodule name, (owner, method) for `submodule.method`; a one-line error otherwise."""
    try:
        return root.get_submodule(target), None
    except AttributeError:
        pass
    owner_name, _, method = target.rpartition(".")
    try:
        owner = root.get_submodule(owner_name)
    except AttributeError:
        owner = None
    if owner is None or not callable(getattr(owner, method, None)):
        raise ValueError(f"compile_targets: {type(root).__name__} has no submodule or method {target!r}")
    return owner, method


def compile_in_place(root: nn.Module, targets: list[str], mode: str) -> None:
    """`torch.compile` each target where it lives: a module's `__call__`, or a method replaced by its compiled form
    (state-dict keys and checkpoints are unchanged)."""
    for target in targets:
        module, method = compile_target(root, target)
        if method is None:
            module.compile(mode=mode)
        else:
            setattr(module, method, torch.compile(getattr(module, method), mode=mode))
