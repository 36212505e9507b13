"""Optimizers and learning-rate schedules as the YAML names them: LightningCLI callables.

Every system takes `optimizer` (called with its parameter groups, e.g. `{class_path: torch.optim.Adam, init_args:
{lr: 1.0e-3, betas: [0.5, 0.999]}}`) and `lr_scheduler` (called with the optimizer, e.g. `torch.optim.lr_scheduler.
StepLR`), so a recipe changes either in YAML alone. A group that names its own `lr` (a fine-tuned recognizer, a
generator submodule) keeps it; the rest take the optimizer's.
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from stisr_lightning.paths import class_of


class InverseSqrtLR(LambdaLR):
    """The transformer schedule CDistNet trains with (`ScheduledOptim`): lr * min(k^-0.5, k * warmup_steps^-1.5) at
    step k (from 1), where lr is then d_model^-0.5 (a peak of lr / sqrt(warmup_steps) at step `warmup_steps`). Step it
    per optimizer step (`lr_scheduler_interval: step`)."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 10000, last_epoch: int = -1) -> None:
        if warmup_steps < 1:
            raise ValueError(f"InverseSqrtLR: warmup_steps must be >= 1, got {warmup_steps}")
        self.warmup_steps = warmup_steps
        super().__init__(optimizer, lambda k: min((k + 1) ** -0.5, (k + 1) * warmup_steps**-1.5), last_epoch)


def configure(optimizer: OptimizerCallable, groups: list[dict[str, Any]], lr_scheduler: LRSchedulerCallable | None,
              interval: Literal["epoch", "step"]) -> Optimizer | dict[str, Any]:
    """What `configure_optimizers` returns for one optimizer over `groups` (empty groups dropped)."""
    groups = [group for group in groups if group["params"]]
    built = optimizer(groups)
    if lr_scheduler is None:
        return built
    return {"optimizer": built, "lr_scheduler": {"scheduler": lr_scheduler(built), "interval": interval}}


_OPTIMIZER_KEYS = ("lr", "betas", "weight_decay", "eps")
_RENAMED_OPTIMIZERS = {"adam": "torch.optim.Adam", "adadelta": "torch.optim.Adadelta"}


def upgrade_optimizer_args(class_path: str, init_args: dict[str, Any]) -> dict[str, Any]:
    """A system's `init_args` from a run saved before optimizers were callables (`lr`, `betas`, `weight_decay`,
    `eps`, `optimizer: adam | adadelta`, `lr_decay_epochs` / `lr_decay_gamma`, `lr_milestones`, `lr_schedule` /
    `warmup_steps`) in today's keys, with the optimizer and schedule those runs trained with; other configs are
    returned unchanged. The system class may name the optimizer it used then (`legacy_optimizer`, default Adam)."""
    if "lr" not in init_args or isinstance(init_args.get("optimizer"), dict):
        return init_args
    legacy = getattr(class_of(class_path), "legacy_optimizer", "torch.optim.Adam")
    args = dict(init_args)
    optimizer_class = _RENAMED_OPTIMIZERS.get(args.pop("optimizer", None), legacy)
    optimizer_args = {key: args.pop(key) for key in _OPTIMIZER_KEYS if key in args}
    if optimizer_class.endswith("Adadelta"):
        # the old Adadelta branch took only lr and weight_decay, so eps was torch's 1e-6; named, since jsonargparse
        # would keep the default optimizer's (Adam's 1e-8) when the class changes
        optimizer_args.pop("betas", None)
        optimizer_args["eps"] = 1e-6
    args["optimizer"] = {"class_path": optimizer_class, "init_args": optimizer_args}
    gamma = args.pop("lr_decay_gamma", None)
    decay_epochs, milestones = args.pop("lr_decay_epochs", None), args.pop("lr_milestones", None)
    schedule, warmup_steps = args.pop("lr_schedule", None), args.pop("warmup_steps", None)
    if decay_epochs:
        args["lr_scheduler"] = {"class_path": "torch.optim.lr_scheduler.StepLR",
                                "init_args": {"step_size": decay_epochs, "gamma": gamma}}
    elif milestones:
        args["lr_scheduler"] = {"class_path": "torch.optim.lr_scheduler.MultiStepLR",
                                "init_args": {"milestones": milestones, "gamma": gamma}}
    elif schedule == "inverse_sqrt":
        args["lr_scheduler"] = {"class_path": f"{__name__}.InverseSqrtLR", "init_args": {"warmup_steps": warmup_steps}}
        args["lr_scheduler_interval"] = "step"
    return args
