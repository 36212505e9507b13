"""A `search:` sweep file: its keys, the params' distributions and each preset's search."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from stisr_lightning.sweeps.spec import (
    Preset,
    base_experiment,
    check_keys,
    parse_presets,
    read_spec_yaml,
    resolve_spec_path,
    spec_error,
    string_map,
    sweeps_root,
)

METHODS = ("tpe", "random", "grid")
DIRECTIONS = ("maximize", "minimize")
TOP_KEYS = {"name", "paper", "description", "vars", "presets", "base", "search"}
SEARCH_KEYS = {"method", "n_trials", "direction", "metric", "params", "seed", "prune"}
PRUNE_KEYS = {"monitor", "startup_trials", "warmup_steps"}
PARAM_KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
              "categorical": {"type", "choices"}}


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
        raise spec_error(where, f"must be a mapping with type float, int or categorical, got {entry!r}")
    check_keys(where, entry, PARAM_KEYS[entry["type"]], f"{entry['type']} param")
    if entry["type"] == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices or not all(
                c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise spec_error(where, "categorical needs `choices`: a non-empty list of numbers, strings, booleans or null")
        return optuna.distributions.CategoricalDistribution(choices)
    kind = float if entry["type"] == "float" else int
    low, high, step, log = entry.get("low"), entry.get("high"), entry.get("step"), entry.get("log", False)
    numbers = (int, float) if kind is float else (int,)
    if any(isinstance(v, bool) or not isinstance(v, numbers) for v in (low, high)) or not low < high:
        raise spec_error(where, f"{entry['type']} needs {entry['type']} `low` < `high`, got low={low!r} high={high!r}")
    if not isinstance(log, bool) or (log and low <= 0) or (log and step is not None):
        raise spec_error(where, "`log` must be true/false, needs low > 0 and no `step`")
    if step is not None and (isinstance(step, bool) or not isinstance(step, numbers) or step <= 0):
        raise spec_error(where, f"`step` must be a positive {entry['type']}, got {step!r}")
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
    check_keys(where, data, SEARCH_KEYS, "search")
    for key in ("n_trials", "metric", "params"):
        if key not in data:
            raise spec_error(where, f"missing search key {key!r}")
    method, direction = data.get("method", "tpe"), data.get("direction", "maximize")
    if method not in METHODS:
        raise spec_error(where, f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if direction not in DIRECTIONS:
        raise spec_error(where, f"direction must be maximize or minimize, got {direction!r}")
    if isinstance(data["n_trials"], bool) or not isinstance(data["n_trials"], int) or data["n_trials"] < 1:
        raise spec_error(where, f"n_trials must be a positive integer, got {data['n_trials']!r}")
    try:
        metric = str(data["metric"]).format_map(vars_)
    except (KeyError, ValueError) as error:
        raise spec_error(where, f"metric {data['metric']!r}: unknown var {error}") from None
    if not metric.startswith(("test/", "val/")):
        raise spec_error(where, f"metric must be a results.json key (test/...) or a validation metric (val/...), got {metric!r}")
    if not isinstance(data["params"], dict) or not data["params"]:
        raise spec_error(where, "params must map dotted config keys to distributions")
    params = {str(key): _distribution(f"{where}: param {key!r}", entry) for key, entry in data["params"].items()}
    if method == "grid":
        for key, dist in params.items():
            if isinstance(dist, optuna.distributions.FloatDistribution) and dist.step is None:
                raise spec_error(f"{where}: param {key!r}", "grid search needs categorical, int or float-with-step params")
    prune = data.get("prune")
    if prune is not None:
        check_keys(f"{where}: prune", prune, PRUNE_KEYS, "prune")
        prune = Pruning(**prune)
        if not prune.monitor.startswith("val/") or direction != "maximize":
            raise spec_error(f"{where}: prune", "monitor must be a val/ metric (higher is better) and direction maximize")
    elif metric.startswith("val/"):
        prune = Pruning(monitor=metric, startup_trials=10**9)  # reports the metric without ever pruning
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise spec_error(where, f"seed must be an integer, got {seed!r}")
    return Search(method, data["n_trials"], direction, metric, params, seed, prune)


def load_search_spec(spec: str | Path) -> SearchSpec:
    path, data = read_spec_yaml(spec)
    where = str(path)
    check_keys(where, data, TOP_KEYS, "top-level")
    for key in ("name", "paper", "base", "presets", "search"):
        if key not in data:
            raise spec_error(where, f"missing top-level key {key!r}")
    base = base_experiment(where, data["base"], sweeps_root(path).parent / "experiments")
    presets = data["presets"]
    if not isinstance(presets, dict) or not presets:
        raise spec_error(where, "presets must map preset names (tiny, small, full) to settings")
    searches, plain = {}, {}
    top = data["search"]
    check_keys(f"{where}: search", top, SEARCH_KEYS, "search")
    for name, entry in presets.items():
        entry = dict(entry or {})
        extra = entry.pop("search", None) or {}
        check_keys(f"{where}: preset {name!r}: search", extra, SEARCH_KEYS, "search")
        plain[name] = entry
        searches[name] = {**top, **extra}
    parsed = parse_presets(where, plain, string_map(where, data.get("vars"), "vars"))
    searches = {name: _search(f"{where}: preset {name!r}: search", searches[name], parsed[name].vars) for name in parsed}
    return SearchSpec(path, str(data["name"]), str(data["paper"]), base, parsed, searches, str(data.get("description", "")))
