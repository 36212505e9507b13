"""W&B for sweeps: cell runs grouped by sweep and tagged with paper and tables, one aggregator run with the tables,
and an export to a W&B sweep config for people who prefer `wandb agent`.

Everything is offline unless the user sets WANDB_MODE: cell runs and the aggregator write run folders that
`wandb sync` uploads later. The aggregator reads the store, not the W&B API, so it also works in CI.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

import yaml

from stisr_lightning.sweeps.expand import Cell, ConfigResolver, Expansion
from stisr_lightning.sweeps.spec import SweepSpec, SweepSpecError
from stisr_lightning.sweeps.store import CellStore
from stisr_lightning.sweeps.tables import build_table, flat_columns

DEFAULT_PROJECT = "stisr-lightning"
LOGGER_KEY = "trainer.logger"
LOGGER_ARGS = "trainer.logger.init_args"
TRAIN_MODULE = "stisr_lightning.cli.train"


def default_offline() -> str:
    """Offline unless the user chose otherwise; children (cell runs) inherit it."""
    return os.environ.setdefault("WANDB_MODE", "offline")


def sweep_group(spec: SweepSpec, preset: str) -> str:
    return f"{spec.name}-{preset}"


def row_tag(table: str, row: str) -> str:
    """The tag that puts a cell's run in a row's run set of the sweep dashboard (W&B tags hold 64 characters)."""
    return f"row:{table}/{row}"[:64]


def cell_tags(spec: SweepSpec, preset: str, cell: Cell) -> list[str]:
    tables = dict.fromkeys(table for table, _ in cell.members)
    return [f"paper:{spec.paper}", *(f"table:{table}" for table in tables), f"preset:{preset}",
            *(row_tag(table, row) for table, row in cell.members)]


def _is_wandb(logger: Any) -> bool:
    return isinstance(logger, dict) and str(logger.get("class_path", "")).endswith("WandbLogger")


class CellLoggers:
    """Which cells log to W&B: a `trainer.logger` override of false/null says no at once; otherwise the cell's config
    is resolved (once per config hash) and its logger must be a single WandbLogger."""

    def __init__(self, resolver: ConfigResolver):
        self.resolver = resolver
        self._configs: dict[str, dict[str, Any]] = {}

    def config(self, cell: Cell) -> dict[str, Any]:
        if cell.config_hash not in self._configs:
            self._configs[cell.config_hash] = self.resolver.resolve(cell.subcommand, cell.base, cell.overrides)
        return self._configs[cell.config_hash]

    def base_config(self, subcommand: str, base: Path) -> dict[str, Any]:
        key = f"{subcommand}:{base}"
        if key not in self._configs:
            self._configs[key] = self.resolver.resolve(subcommand, base, {})
        return self._configs[key]

    def wandb_logger(self, cell: Cell) -> dict[str, Any] | None:
        if cell.overrides.get(LOGGER_KEY, True) in (False, None):
            return None
        logger = (self.config(cell).get("trainer") or {}).get("logger")
        return logger if _is_wandb(logger) else None


def tracking_overrides(spec: SweepSpec, preset: str, cell: Cell) -> dict[str, Any]:
    return {
        f"{LOGGER_ARGS}.group": sweep_group(spec, preset),
        f"{LOGGER_ARGS}.tags": cell_tags(spec, preset, cell),
        f"{LOGGER_ARGS}.name": cell.cell_id,
        f"{LOGGER_ARGS}.job_type": "train" if cell.subcommand == "fit" else "eval",
    }


def with_tracking(cells: list[Cell], spec: SweepSpec, preset: str, loggers: CellLoggers) -> tuple[list[Cell], str]:
    """Copies of the cells whose WandbLogger gets the sweep's group, tags, run name and job type (appended to the
    overrides, so the cell id and config hash stay those of the experiment); returns them and the W&B project."""
    tracked, project = [], None
    for cell in cells:
        logger = loggers.wandb_logger(cell)
        if logger is None:
            tracked.append(cell)
            continue
        project = project or (logger.get("init_args") or {}).get("project")
        tracked.append(dataclasses.replace(cell, overrides={**cell.overrides, **tracking_overrides(spec, preset, cell)}))
    return tracked, project or DEFAULT_PROJECT


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "sweep"


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def store_snapshot(store: CellStore, out_dir: Path) -> Path:
    """The store as one file: a consistent copy of a SQLite store (WAL included), else every record as JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    database = store.engine.url.database if store.engine.url.get_backend_name() == "sqlite" else None
    if database:
        target = out_dir / "store.db"
        target.unlink(missing_ok=True)
        with sqlite3.connect(database) as source, sqlite3.connect(target) as copy:
            source.backup(copy)
        return target
    target = out_dir / "store.json"
    records = {cell_id: dataclasses.asdict(record) for cell_id, record in store.records().items()}
    target.write_text(json.dumps(records, indent=1, sort_keys=True))
    return target


def log_aggregate(spec: SweepSpec, preset: str, expansion: Expansion, store: CellStore, out_dir: Path,
                  project: str = DEFAULT_PROJECT) -> Path | None:
    """One `aggregate` run in the sweep's group: every table as a wandb.Table (numeric: ours, std, paper, diff) and
    the store plus the table files as an artifact. Returns the run folder (None when W&B is disabled)."""
    import wandb

    default_offline()
    out_dir = Path(out_dir)
    records = store.records(expansion.cells)
    group = sweep_group(spec, preset)
    table_ids = [table.id for table in expansion.tables if any(key[0] == table.id for key in expansion.by_row)]
    run = wandb.init(project=project, group=group, job_type="aggregate", name=f"{group}-tables",
                     dir=os.environ.get("WANDB_DIR") or str(out_dir),
                     tags=[f"paper:{spec.paper}", *(f"table:{table}" for table in table_ids), f"preset:{preset}"],
                     config={"sweep": spec.name, "paper": spec.paper, "preset": preset, "spec": str(spec.path),
                             "store": _redacted(store.url), "cells": len(expansion.cells)})
    try:
        for table in expansion.tables:
            if table.id in table_ids:
                frame = flat_columns(build_table(spec, spec.presets[preset], table, expansion, records)).reset_index()
                run.log({f"tables/{table.id}": wandb.Table(dataframe=frame)})
        artifact = wandb.Artifact(_safe_name(f"{group}-results"), type="sweep-results",
                                  description=f"results store and tables of sweep {spec.name} (preset {preset})")
        artifact.add_file(str(store_snapshot(store, out_dir / "wandb_artifact")))
        if (out_dir / "tables").is_dir():
            artifact.add_dir(str(out_dir / "tables"), name="tables")
        run.log_artifact(artifact)
        folder = Path(run.dir).parent if not run.disabled else None
    finally:
        run.finish()
    return folder


# --- export to a W&B sweep config ----------------------------------------------------------------------------------


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _grid_parameters(points: list[dict[str, Any]], where: str) -> dict[str, dict[str, Any]]:
    """W&B `parameters` whose grid (cartesian product) is exactly `points`; raises when the points are no product."""
    keys = list(dict.fromkeys(key for point in points for key in point))
    values = {key: list({_canonical(p[key]): p[key] for p in points}.values()) for key in keys}
    grid = {tuple(_canonical(v) for v in combo) for combo in itertools.product(*(values[k] for k in keys))}
    wanted = {tuple(_canonical(p[key]) for key in keys) for p in points}
    if grid != wanted:
        varying = [key for key in keys if len(values[key]) > 1]
        raise SweepSpecError(f"{where}: its cells are not a grid over {', '.join(varying)} ({len(wanted)} cells, "
                             f"{len(grid)} grid points); a W&B grid is a cartesian product, export a subset with --only")
    return {key: {"value": vals[0]} if len(vals) == 1 else {"values": vals} for key, vals in values.items()}


def wandb_sweep_configs(spec: SweepSpec, preset: str, expansion: Expansion, loggers: CellLoggers,
                        repo: Path) -> list[dict[str, Any]]:
    """One W&B sweep config per (subcommand, base experiment) of the cells: program stisr-train, method grid over
    the cells' dotted overrides and seeds. Keys a cell leaves at the base's value get that value, so every grid point
    resolves to one of our cells. Logging is switched back on (W&B agents need the WandbLogger). Evaluation cells
    and cells that train from another cell's checkpoint are left out: only the engine's run folders hold those."""
    groups: dict[tuple[str, Path], list[Cell]] = {}
    for cell in (cell for cell in expansion.cells.values() if not cell.needs):
        groups.setdefault((cell.subcommand, cell.base), []).append(cell)
    configs = []
    for (subcommand, base), cells in groups.items():
        keys = list(dict.fromkeys(key for cell in cells for key in cell.overrides if key != LOGGER_KEY))
        config = loggers.base_config(subcommand, base)
        points = []
        for cell in cells:
            point = {key: cell.overrides.get(key, _lookup(config, key)) for key in keys}
            points.append({**point, "seed_everything": cell.seed})
        rows = sorted({f"{table}/{row}" for cell in cells for table, row in cell.members})
        parameters = _grid_parameters(points, f"{spec.path}: rows {', '.join(rows)} ({base.name} [{subcommand}])")
        try:
            base_arg = str(base.relative_to(repo))
        except ValueError:
            base_arg = str(base)
        online = _is_wandb((config.get("trainer") or {}).get("logger"))
        logging = ["--trainer.logger.init_args.offline=false"] if online else []
        configs.append({
            "name": f"{sweep_group(spec, preset)}-{base.stem}-{subcommand}",
            "description": f"{spec.name} ({spec.paper}), preset {preset}: {', '.join(rows)}",
            "program": "stisr-train",
            "method": "grid",
            "command": ["${env}", "WANDB_MODE=online", "${interpreter}", "-m", TRAIN_MODULE, subcommand,
                        "--config", base_arg, *logging, "${args}"],
            "parameters": parameters,
        })
    return configs


def write_wandb_sweeps(configs: list[dict[str, Any]], path: Path) -> list[Path]:
    """One file per config: `path` itself when there is one, else `<stem>.<name suffix>.yaml` beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for config in configs:
        target = path if len(configs) == 1 else path.with_name(f"{path.stem}.{config['name']}{path.suffix or '.yaml'}")
        target.write_text(yaml.safe_dump(config, sort_keys=False, width=120))
        written.append(target)
    return written
