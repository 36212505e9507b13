"""The optuna study of a search: creating (or joining) it, a trial's objective value, and its trials as a table."""

from __future__ import annotations

import math

import optuna
import pandas as pd

from stisr_lightning.callbacks.pruning import PRUNED_ATTR, PRUNER_ATTR, build_pruner, load_storage
from stisr_lightning.sweeps.search.spec import Search, grid_space
from stisr_lightning.sweeps.store import DONE, CellRecord


def objective(metric: str, record: CellRecord, trial: optuna.trial.FrozenTrial) -> tuple[float | None, str | None]:
    """The trial's value: a results.json metric of a done cell, or the last reported validation value."""
    if metric.startswith("val/"):
        if record.status == DONE and trial.intermediate_values:
            return trial.intermediate_values[max(trial.intermediate_values)], None
        return None, record.error or f"no {metric} was reported"
    if record.status != DONE:
        return None, record.error
    value = (record.results or {}).get("metrics", {}).get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, f"results.json has no value for {metric!r}"
    return float(value), None


def create_study(name: str, url: str, search: Search) -> optuna.Study:
    samplers = {"tpe": lambda: optuna.samplers.TPESampler(seed=search.seed),
                "random": lambda: optuna.samplers.RandomSampler(seed=search.seed),
                "grid": lambda: optuna.samplers.GridSampler(grid_space(search.params), seed=search.seed)}
    pruning = None if search.prune is None else {"startup_trials": search.prune.startup_trials,
                                                  "warmup_steps": search.prune.warmup_steps}
    study = optuna.create_study(storage=load_storage(url), study_name=name, direction=search.direction,
                                sampler=samplers[search.method](), pruner=build_pruner(pruning), load_if_exists=True)
    study.set_user_attr(PRUNER_ATTR, pruning)
    return study


def short_name(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def trials_frame(study: optuna.Study, monitor: str | None = None) -> pd.DataFrame:
    """One row per trial: state, objective value (complete trials only), params (last key part), the last
    reported validation value, time, cell id and why it stopped."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get("over_budget"):
            continue
        duration = trial.duration.total_seconds() if trial.duration else None
        note = trial.user_attrs.get("error") or (f"pruned at step {trial.system_attrs[PRUNED_ATTR]}"
                                                 if PRUNED_ATTR in trial.system_attrs else "")
        complete = trial.state == optuna.trial.TrialState.COMPLETE
        last = trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None
        rows.append({"trial": trial.number, "state": trial.state.name.lower(), "value": trial.value if complete else None,
                     **{short_name(k): v for k, v in trial.params.items()},
                     **({f"last {monitor}": last} if monitor else {}), "seconds": duration,
                     "cell": trial.user_attrs.get("cell_id", ""), "note": note})
    return pd.DataFrame(rows).set_index("trial") if rows else pd.DataFrame()


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


