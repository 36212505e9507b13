"""Hyperparameter search (`search:` sweep files): an optuna study whose trials are cells of the sweep engine.

The driver owns every trial decision (ask/tell): a worker asks the study for params, runs them as one `stisr-train
fit` cell through the engine's launcher (same run folders, logs, store records, Ctrl-C and crash handling), reads
the cell's results.json and tells the study. The study lives in the same storage URL as the results store, so many
workers (threads here, processes on other machines with `--storage postgresql://...`) share it. Pruning happens
inside the trial's process: `OptunaPruning` reports the validation metric after every validation and stops the run
when the study's pruner says so. The storage URL reaches it through the environment, never through the config (it
may hold a password, and the config lands in results.json and W&B).
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from stisr_lightning.sweeps.expand import (
    Cell,
    ConfigResolver,
    Expander,
    Expansion,
    _one_line,
    config_hash,
    ensure_synthetic,
    format_value,
)
from stisr_lightning.sweeps.run import CellCommand, SweepRunner, pid_alive, stisr_train_command
from stisr_lightning.sweeps.spec import (
    Preset,
    Row,
    SweepSpecError,
    Table,
    _base,
    _check_keys,
    _fail,
    _presets,
    _string_map,
    read_spec_yaml,
    resolve_spec_path,
    sweeps_root,
)
from stisr_lightning.sweeps.store import DONE, FAILED, RUNNING, CellRecord, CellStore, Worker
from stisr_lightning.sweeps.wandb_io import CellLoggers, tracking_overrides
from stisr_lightning.weights import STRICT_WEIGHTS_ENV, missing_official_message, official_path, official_references

STORAGE_ENV = "STISR_OPTUNA_STORAGE"
PRUNED_ATTR = "stisr:pruned_at_step"
PRUNER_ATTR = "stisr:pruner"
CALLBACKS_KEY = "trainer.callbacks+"
TABLE_ID = "search"
METHODS = ("tpe", "random", "grid")
DIRECTIONS = ("maximize", "minimize")
TOP_KEYS = {"name", "paper", "description", "vars", "presets", "base", "search"}
SEARCH_KEYS = {"method", "n_trials", "direction", "metric", "params", "seed", "prune"}
PRUNE_KEYS = {"monitor", "startup_trials", "warmup_steps"}
PARAM_KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
              "categorical": {"type", "choices"}}
COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)


# ------------------------------------------------------------------------------------------------------ the file
@dataclass(frozen=True)
class Pruning:
    monitor: str = "val/psnr"  # a validation metric the system logs (higher is better)
    startup_trials: int = 2  # MedianPruner: no pruning before this many trials completed
    warmup_steps: int = 0  # ... nor before this global step within a trial


@dataclass(frozen=True)
class Search:
    method: str
    n_trials: int
    direction: str
    metric: str  # results.json metric key ({var} placeholders) or a `val/...` metric (its last validation value)
    params: dict[str, optuna.distributions.BaseDistribution]
    seed: int = 0
    prune: Pruning | None = None

    @property
    def budget(self) -> int:
        """Total trials across all workers; a grid never asks for more points than it has."""
        if self.method != "grid":
            return self.n_trials
        return min(self.n_trials, math.prod(len(values) for values in grid_space(self.params).values()))


@dataclass
class SearchSpec:
    path: Path
    name: str
    paper: str
    base: Path
    presets: dict[str, Preset]
    searches: dict[str, Search]  # by preset: the file's `search:` with the preset's `search:` on top
    description: str = ""
    subcommand: str = "fit"


def is_search_file(spec: str | Path) -> bool:
    try:
        data = yaml.safe_load(resolve_spec_path(spec).read_text())
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and "search" in data


def _distribution(where: str, entry: Any) -> optuna.distributions.BaseDistribution:
    if not isinstance(entry, dict) or entry.get("type") not in PARAM_KEYS:
        raise _fail(where, f"must be a mapping with type float, int or categorical, got {entry!r}")
    _check_keys(where, entry, PARAM_KEYS[entry["type"]], f"{entry['type']} param")
    if entry["type"] == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices or not all(
                c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise _fail(where, "categorical needs `choices`: a non-empty list of numbers, strings, booleans or null")
        return optuna.distributions.CategoricalDistribution(choices)
    kind = float if entry["type"] == "float" else int
    low, high, step, log = entry.get("low"), entry.get("high"), entry.get("step"), entry.get("log", False)
    numbers = (int, float) if kind is float else (int,)
    if any(isinstance(v, bool) or not isinstance(v, numbers) for v in (low, high)) or not low < high:
        raise _fail(where, f"{entry['type']} needs {entry['type']} `low` < `high`, got low={low!r} high={high!r}")
    if not isinstance(log, bool) or (log and low <= 0) or (log and step is not None):
        raise _fail(where, "`log` must be true/false, needs low > 0 and no `step`")
    if step is not None and (isinstance(step, bool) or not isinstance(step, numbers) or step <= 0):
        raise _fail(where, f"`step` must be a positive {entry['type']}, got {step!r}")
    if kind is float:
        return optuna.distributions.FloatDistribution(float(low), float(high), log=log, step=step)
    return optuna.distributions.IntDistribution(low, high, log=log, step=step or 1)


def grid_space(params: dict[str, optuna.distributions.BaseDistribution]) -> dict[str, list]:
    space = {}
    for key, dist in params.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            space[key] = list(dist.choices)
        elif isinstance(dist, optuna.distributions.IntDistribution):
            space[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            count = int(round((dist.high - dist.low) / dist.step)) + 1
            space[key] = [dist.low + i * dist.step for i in range(count)]
    return space


def _search(where: str, data: Any, vars_: dict[str, str]) -> Search:
    _check_keys(where, data, SEARCH_KEYS, "search")
    for key in ("n_trials", "metric", "params"):
        if key not in data:
            raise _fail(where, f"missing search key {key!r}")
    method, direction = data.get("method", "tpe"), data.get("direction", "maximize")
    if method not in METHODS:
        raise _fail(where, f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if direction not in DIRECTIONS:
        raise _fail(where, f"direction must be maximize or minimize, got {direction!r}")
    if isinstance(data["n_trials"], bool) or not isinstance(data["n_trials"], int) or data["n_trials"] < 1:
        raise _fail(where, f"n_trials must be a positive integer, got {data['n_trials']!r}")
    try:
        metric = str(data["metric"]).format_map(vars_)
    except (KeyError, ValueError) as error:
        raise _fail(where, f"metric {data['metric']!r}: unknown var {error}") from None
    if not metric.startswith(("test/", "val/")):
        raise _fail(where, f"metric must be a results.json key (test/...) or a validation metric (val/...), got {metric!r}")
    if not isinstance(data["params"], dict) or not data["params"]:
        raise _fail(where, "params must map dotted config keys to distributions")
    params = {str(key): _distribution(f"{where}: param {key!r}", entry) for key, entry in data["params"].items()}
    if method == "grid":
        for key, dist in params.items():
            if isinstance(dist, optuna.distributions.FloatDistribution) and dist.step is None:
                raise _fail(f"{where}: param {key!r}", "grid search needs categorical, int or float-with-step params")
    prune = data.get("prune")
    if prune is not None:
        _check_keys(f"{where}: prune", prune, PRUNE_KEYS, "prune")
        prune = Pruning(**prune)
        if not prune.monitor.startswith("val/") or direction != "maximize":
            raise _fail(f"{where}: prune", "monitor must be a val/ metric (higher is better) and direction maximize")
    elif metric.startswith("val/"):
        prune = Pruning(monitor=metric, startup_trials=10**9)  # reports the metric without ever pruning
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _fail(where, f"seed must be an integer, got {seed!r}")
    return Search(method, data["n_trials"], direction, metric, params, seed, prune)


def load_search_spec(spec: str | Path) -> SearchSpec:
    path, data = read_spec_yaml(spec)
    where = str(path)
    _check_keys(where, data, TOP_KEYS, "top-level")
    for key in ("name", "paper", "base", "presets", "search"):
        if key not in data:
            raise _fail(where, f"missing top-level key {key!r}")
    base = _base(where, data["base"], sweeps_root(path).parent / "experiments")
    presets = data["presets"]
    if not isinstance(presets, dict) or not presets:
        raise _fail(where, "presets must map preset names (tiny, small, full) to settings")
    searches, plain = {}, {}
    top = data["search"]
    _check_keys(f"{where}: search", top, SEARCH_KEYS, "search")
    for name, entry in presets.items():
        entry = dict(entry or {})
        extra = entry.pop("search", None) or {}
        _check_keys(f"{where}: preset {name!r}: search", extra, SEARCH_KEYS, "search")
        plain[name] = entry
        searches[name] = {**top, **extra}
    parsed = _presets(where, plain, _string_map(where, data.get("vars"), "vars"))
    searches = {name: _search(f"{where}: preset {name!r}: search", searches[name], parsed[name].vars) for name in parsed}
    return SearchSpec(path, str(data["name"]), str(data["paper"]), base, parsed, searches, str(data.get("description", "")))


# --------------------------------------------------------------------------------------- inside the trial process
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


# ------------------------------------------------------------------------------------------------------ the driver
@dataclass
class SearchSummary:
    told: dict[str, int] = field(default_factory=dict)  # state name -> trials this run finished


class SearchRunner(SweepRunner):
    """Workers that ask the study for a trial, run it as an engine cell and tell the result, until the study holds
    `search.budget` trials (complete, pruned or running; failed ones are asked again, at most budget times)."""

    def __init__(self, spec: SearchSpec, preset: str, out_dir: Path, storage_url: str, *,
                 cell_command: CellCommand = stisr_train_command, workers: int = 1, devices_per_worker: int = 1,
                 cwd: Path | None = None, heartbeat_s: float = 30.0, stale_after_s: float = 300.0,
                 resolver: ConfigResolver | None = None):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(CellStore(storage_url), [], out_dir, cell_command=cell_command, workers=workers,
                         devices_per_worker=devices_per_worker, cwd=cwd, heartbeat_s=heartbeat_s,
                         stale_after_s=stale_after_s)
        self.spec, self.preset, self.search = spec, spec.presets[preset], spec.searches[preset]
        self.url, self.out_dir = storage_url, Path(out_dir).resolve()
        self.resolver = resolver or ConfigResolver()
        self.expander = Expander(spec, self.preset, self.out_dir, self.resolver)  # type: ignore[arg-type]
        self.data = self.expander.data_overrides(Table(TABLE_ID, TABLE_ID, [], []), Row("trial", spec.base, "fit"))
        self.study_name = f"{spec.name}-{preset}"  # also the W&B group of its trials (wandb_io.sweep_group)
        self.loggers = CellLoggers(self.resolver)
        self.asking = threading.Lock()
        self.results = SearchSummary()

    @cached_property
    def study(self) -> optuna.Study:
        return create_study(self.study_name, self.url, self.search)

    def validate(self) -> None:
        """Resolves one point of the space (each param's low end / first choice) with the real parser."""
        point = {key: dist.low if hasattr(dist, "low") else dist.choices[0] for key, dist in self.search.params.items()}
        try:
            self.resolver.resolve("fit", self.spec.base, {**self.overrides(point)})
        except Exception:
            for key, value in point.items():
                try:
                    self.resolver.resolve("fit", self.spec.base, {**self.preset.overrides, **self.data, key: value})
                except Exception as error:
                    raise SweepSpecError(f"{self.spec.path}: search: param {key!r} (value {value!r}) is not valid for "
                                         f"{self.spec.base.name}: {_one_line(str(error))}") from None
            raise

    def overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**self.preset.overrides, **self.data, **params}

    def ensure_data(self) -> None:
        ensure_synthetic(Expansion({}, {}, [], self.expander.data_dir), self.expander)

    def run(self, retry_failed: bool = False) -> SearchSummary:
        self.store.reclaim_stale(self.stale_after_s, pid_alive)
        self.fail_stale_trials()
        super().run(retry_failed)
        return self.results

    def fail_stale_trials(self) -> None:
        """Trials left running by a dead driver (this host) or whose cell is no longer running (other hosts, after
        the store reclaimed it) are failed, so the budget asks for them again."""
        host, now = socket.gethostname(), time.time()
        records = self.store.records()
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            attrs = trial.user_attrs
            if attrs.get("host") == host and attrs.get("pid") == os.getpid():
                continue
            record = records.get(attrs.get("cell_id", ""))
            dead = attrs.get("host") == host and not pid_alive(int(attrs.get("pid", 0)))
            orphaned = (record is None or record.status != RUNNING) and now - trial.datetime_start.timestamp() > 60
            if dead or orphaned:
                self.study.tell(trial.number, state=optuna.trial.TrialState.FAIL)

    def _ask(self, worker: Worker) -> optuna.Trial | None:
        with self.asking:
            trials = self.study.get_trials(deepcopy=False)
            counted = sum(t.state in COUNTED for t in trials)
            failed = sum(t.state == optuna.trial.TrialState.FAIL and "over_budget" not in t.user_attrs for t in trials)
            if counted >= self.search.budget or failed >= self.search.budget or self.stop.is_set():
                return None
            trial = self.study.ask(self.search.params)
            before = sum(t.state in COUNTED for t in self.study.get_trials(deepcopy=False) if t.number < trial.number)
            if before >= self.search.budget:  # another driver (machine) filled the budget meanwhile
                trial.set_user_attr("over_budget", True)
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                return None
            for key, value in (("host", worker.host), ("pid", worker.pid), ("worker", worker.id)):
                trial.set_user_attr(key, value)
            return trial

    def _work(self, worker: Worker, env: dict[str, str]) -> None:
        env = {**env, STORAGE_ENV: self.url}
        while not self.stop.is_set():
            trial = self._ask(worker)
            if trial is None:
                return
            try:
                state = self._run_trial(trial, worker, env)
            except Exception as error:  # a broken trial must not take the other workers down
                trial.set_user_attr("error", _one_line(f"{type(error).__name__}: {error}"))
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                state = optuna.trial.TrialState.FAIL
            with self.lock:
                self.results.told[state.name] = self.results.told.get(state.name, 0) + 1

    def trial_cell(self, trial: optuna.Trial) -> Cell:
        overrides = self.overrides(trial.params)
        digest = config_hash("fit", self.resolver.resolve("fit", self.spec.base, overrides), self.out_dir)
        if self.search.prune:  # added after hashing: the trial number does not change the experiment
            overrides[CALLBACKS_KEY] = {"class_path": f"{__name__}.OptunaPruning", "init_args": {
                "study_name": self.study_name, "trial_number": trial.number, "monitor": self.search.prune.monitor}}
        cell = Cell(f"{digest}-s{self.search.seed}", digest, self.search.seed, "fit", self.spec.base, overrides,
                    [(TABLE_ID, f"trial {trial.number}")])
        if self.loggers.wandb_logger(cell) is not None:  # the study's group and tags: the dashboard's run set
            cell.overrides.update(tracking_overrides(self.spec, self.preset.name, cell))
        return cell

    def _run_trial(self, trial: optuna.Trial, worker: Worker, env: dict[str, str]) -> optuna.trial.TrialState:
        cell = self.trial_cell(trial)
        trial.set_user_attr("cell_id", cell.cell_id)
        twin = next((t for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                     if t.user_attrs.get("cell_id") == cell.cell_id), None)
        if twin is not None:  # the same config ran for an earlier trial (a grid point asked twice)
            for step, value in twin.intermediate_values.items():
                trial.report(value, step)
            self.study.tell(trial, twin.value)
            return optuna.trial.TrialState.COMPLETE
        record = self._run(cell, worker, env)
        frozen = self.study._storage.get_trial(trial._trial_id)
        if record is None:  # interrupted: the cell went back to pending
            trial.set_user_attr("error", "interrupted")
            state = optuna.trial.TrialState.FAIL
        elif PRUNED_ATTR in frozen.system_attrs:
            state = optuna.trial.TrialState.PRUNED
        else:
            value, error = objective(self.search.metric, record, frozen)
            if value is not None:
                self.study.tell(trial, value)
                return optuna.trial.TrialState.COMPLETE
            trial.set_user_attr("error", error)
            state = optuna.trial.TrialState.FAIL
        self.study.tell(trial, state=state)
        return state

    def _run(self, cell: Cell, worker: Worker, env: dict[str, str]) -> CellRecord | None:
        """Runs the cell through the engine (or waits for the worker that already runs it); None if interrupted."""
        run_dir = self.run_dir(cell)
        self.store.add([(cell.cell_id, cell.config_hash, cell.seed, cell.subcommand, cell.argv(run_dir))])
        with self.lock:
            self.cells[cell.cell_id] = cell
        self.store.reset_failed([cell.cell_id])  # a pruned or crashed earlier attempt: asked again, so run again
        while not self.stop.is_set():
            record = self.store.records([cell.cell_id])[cell.cell_id]
            if record.status in (DONE, FAILED):
                return record
            if self.store.claim(cell.cell_id, worker, str(run_dir), str(run_dir / "sweep.log")):
                self._run_cell(cell, worker, env, run_dir, run_dir / "sweep.log")
                if cell.cell_id in self.stopped:
                    return None
                return self.store.records([cell.cell_id])[cell.cell_id]
            time.sleep(1.0)
        return None


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


# ------------------------------------------------------------------------------------------------------ reporting
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


def write_best(runner: SearchRunner, path: Path) -> optuna.trial.FrozenTrial | None:
    """`path`: the base experiment with the best params applied (defaults omitted), ready for `stisr-train fit`.
    The preset's schedule and data overrides stay out: they shape the search, not the experiment."""
    best = best_trial(runner.study)
    if best is None:
        return None
    flags = [f"--{key}={format_value(value)}" for key, value in best.params.items()]
    parser = runner.resolver.parser
    config = parser.parse_args(["fit", "--config", str(runner.spec.base), *flags,
                                f"--seed_everything={runner.search.seed}"])
    text = parser._subcommands_action._name_parser_map["fit"].dump(config["fit"], skip_default=True)
    header = [f"# Best of study {runner.study_name!r}: trial {best.number}, {runner.search.metric} = {best.value:.6g} "
              f"({runner.search.direction}).",
              f"# {runner.spec.base.name} with the searched params: "
              + ", ".join(f"{k} = {format_value(v)}" for k, v in best.params.items()),
              f"# Preset {runner.preset.name!r} overrides (schedule, data) are not included. "
              f"Train: stisr-train fit --config {path.name}"]
    path.write_text("\n".join(header) + "\n" + text)
    return best


def report(runner: SearchRunner) -> str:
    frame = trials_frame(runner.study, runner.search.prune.monitor if runner.search.prune else None)
    out = runner.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if not frame.empty:
        frame.to_csv(out / "trials.csv")
    text = f"{runner.study_name}: {len(frame)} trials, budget {runner.search.budget} ({runner.search.method}, " \
           f"{runner.search.direction} {runner.search.metric})\n\n"
    text += frame.to_markdown(floatfmt=".4g") if not frame.empty else "(no trials yet)"
    best = write_best(runner, out / "best.yaml")
    if best is not None:
        text += f"\n\nbest: trial {best.number}, value {best.value:.6g}; config: {out / 'best.yaml'}"
    (out / "trials.md").write_text(text + "\n")
    return text


def run_search(args, report_only: bool = False) -> int:
    """`stisr-sweep` on a file with a `search:` block (args from stisr_lightning.sweeps.main's parser)."""
    spec = load_search_spec(args.spec)
    if args.preset not in spec.presets:
        raise SweepSpecError(f"{spec.path}: no preset {args.preset!r} (presets: {', '.join(spec.presets)})")
    if getattr(args, "only", None):
        raise SweepSpecError(f"{spec.path}: --only selects table rows; a search file has none")
    out = (args.out or Path("runs") / "sweeps" / f"{spec.name}-{args.preset}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    url = args.storage or f"sqlite:///{out}/store.db"
    began = time.perf_counter()
    runner = SearchRunner(spec, args.preset, out, url, workers=getattr(args, "workers", 1),
                          devices_per_worker=getattr(args, "devices_per_worker", 1), cwd=sweeps_root(spec.path).parent,
                          heartbeat_s=getattr(args, "heartbeat", 30.0), stale_after_s=getattr(args, "stale_after", 300.0))
    runner.validate()
    files = list(dict.fromkeys(official_references(runner.preset.overrides)))
    missing = next((reference for reference in files if not official_path(reference).is_file()), None)
    if missing is not None and not report_only:
        raise SweepSpecError(f"{spec.path}: preset {args.preset!r} needs {missing_official_message(missing)}")
    if runner.preset.strict_weights:  # the trials' stisr-train processes inherit it
        os.environ[STRICT_WEIGHTS_ENV] = "1"
    print(f"stisr-sweep: study {runner.study_name} in {url} ({runner.search.method}, budget {runner.search.budget} "
          f"trials, {runner.workers} worker(s)); validation {time.perf_counter() - began:.1f} s")
    if getattr(args, "dry_run", False):
        for key, dist in runner.search.params.items():
            print(f"  {key}: {dist}")
        print("  official files: " + (", ".join(official_path(reference).name for reference in files) or "none"))
        return 0
    if not report_only:
        runner.ensure_data()
        runner.run()
        print(f"stisr-sweep: this run told {runner.results.told or 'no trials'}")
    print("\n" + report(runner))
    return 130 if runner.summary.interrupted else 0
