"""Pruning of an optuna trial from inside its training process: `OptunaPruning` reports a validation metric to the
study after every validation and stops the run when the study's pruner says so. The study's storage URL comes through
the environment (STISR_OPTUNA_STORAGE), never through the config: it may hold a password, and the config lands in
results.json and W&B. `stisr_lightning.sweeps.search` adds this callback to every trial of a search with `prune:`."""

from __future__ import annotations

import os

import optuna
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

STORAGE_ENV = "STISR_OPTUNA_STORAGE"
PRUNED_ATTR = "stisr:pruned_at_step"  # trial system attribute: the step a trial was pruned at
PRUNER_ATTR = "stisr:pruner"  # study user attribute: the pruner's settings, so every process builds the same one


def load_storage(url: str) -> optuna.storages.RDBStorage:
    sqlite = url.startswith("sqlite")
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else {})


def build_pruner(settings: dict[str, int] | None) -> optuna.pruners.BasePruner:
    if not settings:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=settings["startup_trials"],
                                       n_warmup_steps=settings["warmup_steps"])


class OptunaPruning(Callback):
    """Reports `monitor` to trial `trial_number` of the study after every validation (at the global step) and
    stops the run by raising `optuna.TrialPruned` on every rank when the study's pruner says so. Only rank zero
    touches the storage (URL from `storage` or the STISR_OPTUNA_STORAGE environment variable)."""

    def __init__(self, study_name: str, trial_number: int, monitor: str = "val/psnr", storage: str | None = None):
        self.study_name, self.trial_number, self.monitor, self.storage = study_name, trial_number, monitor, storage
        self._trial: optuna.Trial | None = None

    @property
    def trial(self) -> optuna.Trial:
        if self._trial is None:
            url = self.storage or os.environ.get(STORAGE_ENV)
            if not url:
                raise RuntimeError(f"OptunaPruning: no storage URL (set {STORAGE_ENV})")
            storage = load_storage(url)
            study_id = storage.get_study_id_from_name(self.study_name)
            pruner = build_pruner(storage.get_study_user_attrs(study_id).get(PRUNER_ATTR))
            study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=pruner)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.trial_number)
            self._trial = optuna.Trial(study, trial_id)
        return self._trial

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune, value = False, trainer.callback_metrics.get(self.monitor)
        if trainer.is_global_zero:
            if value is None:
                rank_zero_warn(f"OptunaPruning: {self.monitor!r} was not logged; nothing reported this validation")
            else:
                self.trial.report(float(value), step=trainer.global_step)
                prune = self.trial.should_prune()
                if prune:
                    self.trial.storage.set_trial_system_attr(self.trial._trial_id, PRUNED_ATTR, trainer.global_step)
        if trainer.strategy.broadcast(prune):
            raise optuna.TrialPruned(f"trial {self.trial_number} pruned at step {trainer.global_step} "
                                     f"({self.monitor} = {value})")
