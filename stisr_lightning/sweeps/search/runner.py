"""The search driver: workers ask the study for a trial, run it as one `stisr-train fit` cell of the sweep engine and
tell the study its result; `run_search` is `stisr-sweep` on a `search:` file."""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import optuna

from stisr_lightning.callbacks.pruning import PRUNED_ATTR, STORAGE_ENV
from stisr_lightning.identity import config_identity
from stisr_lightning.sweeps.expand import (
    Cell,
    ConfigResolver,
    Expander,
    Expansion,
    ensure_synthetic,
    format_value,
    one_line,
)
from stisr_lightning.sweeps.run import CellCommand, SweepRunner, pid_alive, stisr_train_command
from stisr_lightning.sweeps.search.spec import SearchSpec, load_search_spec
from stisr_lightning.sweeps.search.study import best_trial, create_study, objective, trials_frame
from stisr_lightning.sweeps.spec import Row, SweepSpecError, Table, sweeps_root
from stisr_lightning.sweeps.store import DONE, FAILED, RUNNING, CellRecord, CellStore, Worker
from stisr_lightning.sweeps.wandb_io import CellLoggers, tracking_overrides
from stisr_lightning.weights import STRICT_WEIGHTS_ENV, missing_official_message, official_path, official_references

CALLBACKS_KEY = "trainer.callbacks+"
TABLE_ID = "search"
COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)


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
                                         f"{self.spec.base.name}: {one_line(str(error))}") from None
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
                trial.set_user_attr("error", one_line(f"{type(error).__name__}: {error}"))
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                state = optuna.trial.TrialState.FAIL
            with self.lock:
                self.results.told[state.name] = self.results.told.get(state.name, 0) + 1

    def trial_cell(self, trial: optuna.Trial) -> Cell:
        overrides = self.overrides(trial.params)
        digest = config_identity("fit", self.resolver.resolve("fit", self.spec.base, overrides), self.out_dir)
        if self.search.prune:  # added after hashing: the trial number does not change the experiment
            overrides[CALLBACKS_KEY] = {"class_path": "stisr_lightning.callbacks.pruning.OptunaPruning", "init_args": {
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
