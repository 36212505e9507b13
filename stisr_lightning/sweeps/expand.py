"""Sweep spec -> cells. A cell is (hash of the resolved experiment config, seed): rows of different tables that
resolve to the same config share one cell, so it is trained once.

An evaluation row's cell runs `stisr-eval` on the checkpoint of the cell it evaluates (same seed), optionally refined
by a trained cell whose generator refines another's output (`refine_output`); its hash covers the test config and the
hashes of those cells. An evaluation that changes nothing is the evaluated cell itself (fit already tested the best checkpoint). A cell of an `init_from` row
trains from the best checkpoint of the same seed's cell of that row (`model.init_args.generator_weights`), whose
path, and so whose hash, enters its config.

Configs are resolved with stisr-train's own parser (no class is instantiated), which also validates every override
key and value before anything trains.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stisr_lightning.identity import config_identity, experiment_config
from stisr_lightning.models.generators.refined import can_refine
from stisr_lightning.paths import class_of
from stisr_lightning.sweeps.spec import SYNTHETIC_SUBSET_NAMES, Preset, Row, SweepSpec, SweepSpecError, Table
from stisr_lightning.weights import official_path, official_references

TRAIN_MODULE, EVALUATE_MODULE = "stisr_lightning.cli.train", "stisr_lightning.cli.evaluate"
CHECKPOINT = Path("checkpoints") / "best.ckpt"  # in a trained cell's run folder (stisr-train's ModelCheckpoint)
INIT_KEY = "model.init_args.generator_weights"  # where an `init_from` row's cells get their starting checkpoint
ERROR_HINTS = ("not accepted", "unrecognized", "not a valid", "expected a", "does not exist", "not found", "invalid")


@dataclass
class Cell:
    cell_id: str  # "<config hash>-s<seed>", also the run folder name
    config_hash: str
    seed: int
    subcommand: str
    base: Path
    overrides: dict[str, Any]  # preset, synthetic data, then row: later keys win
    members: list[tuple[str, str]] = field(default_factory=list)  # (table id, row name)
    evaluates: str | None = None  # cell id whose checkpoint this cell tests with stisr-eval (instead of training)
    refine_with: str | None = None  # cell id of a trained refiner of the output (--refine-with)
    init_from: str | None = None  # cell id whose checkpoint this cell's training starts from
    keep_checkpoints: bool = False  # other cells evaluate this one: keep its checkpoint whatever the config says
    readers: dict[str, str] = field(default_factory=dict)  # recognizer name -> class name, as its config builds it
    official_files: list[str] = field(default_factory=list)  # `official:<file>` references of its config

    @property
    def needs(self) -> list[str]:
        """Cells that must be done before this one runs."""
        return [cell_id for cell_id in (self.evaluates, self.refine_with, self.init_from) if cell_id]

    @property
    def module(self) -> str:
        return EVALUATE_MODULE if self.evaluates else TRAIN_MODULE

    def argv(self, run_dir: Path) -> list[str]:
        """Arguments of `python -m <module>` (stisr-train, or stisr-eval for an evaluation cell). Other cells' run
        folders are siblings of `run_dir`. Keeping a checkpoint does not enter the hash: it changes no result."""
        flags = [f"--{key}={format_value(value)}" for key, value in self.overrides.items()]
        flags += ["--keep_checkpoints=true"] if self.keep_checkpoints else []
        if self.evaluates:
            flags += [f"--{key}={value}" for key, value in
                      evaluated_paths(run_dir.parent, self.evaluates, self.refine_with).items() if value]
        command = [] if self.evaluates else [self.subcommand]  # stisr-eval is always `test`
        return [*command, "--config", str(self.base), *flags, f"--seed_everything={self.seed}",
                f"--trainer.default_root_dir={run_dir}"]


@dataclass
class Expansion:
    cells: dict[str, Cell]  # by cell id, in first-seen order
    by_row: dict[tuple[str, str], list[str]]  # (table id, row) -> cell ids (one per seed)
    tables: list[Table]
    data_dir: Path | None  # synthetic data the preset needs (made by the runner)


def format_value(value: Any) -> str:
    """A command-line value jsonargparse reads back as the same YAML value."""
    return value if isinstance(value, str) else json.dumps(value)


def fill_vars(value: Any, variables: dict[str, str]) -> Any:
    """A row override with `{name}` placeholders for the preset's vars filled in (strings, also inside lists and
    mappings), as column metrics are: one row can then mean `[8, 32]` on synthetic data and `[32, 128]` on the
    paper's. The filled string goes to jsonargparse as YAML, so a var `"[8, 32]"` is a list. Unknown names stay."""
    if isinstance(value, str):
        return re.sub(r"\{(\w+)\}", lambda match: variables.get(match.group(1), match.group(0)), value)
    if isinstance(value, dict):
        return {key: fill_vars(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [fill_vars(item, variables) for item in value]
    return value


def synthetic_dir(out_dir: Path, preset: Preset) -> Path | None:
    data = preset.synthetic
    if data is None:
        return None
    return out_dir / "data" / f"synthetic-{data.train}-{data.test}{f'-str{data.str_test}' if data.str_test else ''}-s{data.seed}"


def one_line(message: str) -> str:
    lines = [" ".join(line.split()) for line in str(message).splitlines() if line.strip()]
    hinted = [line for line in lines if any(h in line.lower() for h in ERROR_HINTS) and "NoneType" not in line]
    return (hinted or lines or ["invalid configuration"])[0][:300]


class ConfigResolver:
    """stisr-train's parser, built once; `resolve` returns the full config (defaults filled in) as a dict.

    jsonargparse parsers keep per-parse state, so concurrent resolves (a search's worker threads) take turns."""

    def __init__(self) -> None:
        from stisr_lightning.cli.train import STISRCLI

        class _ParserReady(Exception):
            pass

        class _ParserOnly(STISRCLI):
            def parse_arguments(self, parser, args) -> None:
                raise _ParserReady(parser)

        try:
            _ParserOnly(args=[])
        except _ParserReady as ready:
            self.parser = ready.args[0]
        parsers = [self.parser, *self.parser._subcommands_action._name_parser_map.values()]
        for parser in parsers:
            parser.exit_on_error = False
        self.parsing = threading.Lock()

    def resolve(self, subcommand: str, base: Path, overrides: dict[str, Any]) -> dict[str, Any]:
        flags = [f"--{key}={format_value(value)}" for key, value in overrides.items()]
        with self.parsing:
            config = self.parser.parse_args([subcommand, "--config", str(base), *flags])
        return experiment_config(config[subcommand].as_dict())


def evaluated_paths(cells_dir: Path, evaluates: str, refine_with: str | None) -> dict[str, str | None]:
    """The stisr-eval options that name an evaluation cell's checkpoint and refiner (cells are siblings)."""
    return {"ckpt_path": str(cells_dir / evaluates / CHECKPOINT),
            "refine_with": str(cells_dir / refine_with) if refine_with else None}


def evaluation_config(config: dict[str, Any], cells_dir: Path, target: Cell, refiner: Cell | None) -> dict[str, Any]:
    """The config that stisr-eval resolves for an evaluation cell: the test config, the evaluated checkpoint and the
    refiner (stisr-eval's own options at their defaults otherwise)."""
    paths = evaluated_paths(cells_dir, target.cell_id, refiner.cell_id if refiner else None)
    return {**config, "refine_steps": None, **paths}


def producible_metrics(config: dict[str, Any]) -> re.Pattern | None:
    """Metric keys a run of this config can write, as a pattern over its test sets and recognizers (None when the
    config does not say)."""
    test_sets = list((config.get("data") or {}).get("test_sets") or {})
    recognizers = list(((config.get("model") or {}).get("init_args") or {}).get("recognizers") or {})
    if not test_sets:
        return None
    datasets = {name.rsplit("/", 1)[0] for name in test_sets if "/" in name}
    names = test_sets + [f"{dataset}/average" for dataset in datasets]
    sets = "|".join(re.escape(name) for name in names)
    readers = "|".join(re.escape(name) for name in recognizers) or "(?!)"
    return re.compile(rf"test/({sets})/(({readers})/(acc|ned)|[a-z_]+)")


class Expander:
    def __init__(self, spec: SweepSpec, preset: Preset, out_dir: Path, resolver: ConfigResolver | None = None):
        self.spec, self.preset, self.out_dir = spec, preset, Path(out_dir).resolve()
        self.resolver = resolver or ConfigResolver()
        self.data_dir = synthetic_dir(self.out_dir, preset)
        self._data_overrides: dict[tuple[str, Path, str], dict[str, Any]] = {}
        self._generators: dict[str, str] = {}  # config hash of a trained cell -> its generator's class path
        self._tested: dict[str, dict[str, Any]] = {}  # trained cell's hash -> the config of its own test

    def _where(self, table: Table, row: Row | None = None) -> str:
        return f"{self.spec.path}: table {table.id}" + (f": row {row.name!r}" if row else "")

    def _resolve(self, where: str, subcommand: str, base: Path, overrides: dict[str, Any], blame: dict[str, Any]):
        try:
            return self.resolver.resolve(subcommand, base, overrides)
        except Exception as error:  # jsonargparse raises ArgumentError, class imports may raise anything
            message = one_line(str(error))
            fixed = {key: value for key, value in overrides.items() if key not in blame}
            for key, value in blame.items():
                try:
                    self.resolver.resolve(subcommand, base, {**fixed, key: value})
                except Exception as single:
                    raise SweepSpecError(f"{where}: key {key!r} (value {value!r}) is not valid for {base.name} "
                                         f"[{subcommand}]: {one_line(str(single))}") from None
            raise SweepSpecError(f"{where}: {base.name} [{subcommand}]: {message}") from None

    def data_overrides(self, table: Table, row: Row) -> dict[str, Any]:
        """Checks the preset on this base, and points train_dirs / test_sets at the preset's synthetic data (same
        test set names as the base, or as the row's `data.test_sets` when it picks other sets)."""
        key = (row.subcommand, row.base, json.dumps(row.overrides.get("data.test_sets"), sort_keys=True))
        if key not in self._data_overrides:
            preset = self.preset.overrides_for(row.base)
            config = self._resolve(f"{self._where(table, row)}: preset {self.preset.name!r}", row.subcommand, row.base,
                                   preset, preset)
            if self.data_dir is None:
                self._data_overrides[key] = {}
                return {}
            test_sets = dict(row.overrides.get("data.test_sets") or (config.get("data") or {}).get("test_sets") or {})
            unknown = [name for name in test_sets if self.preset.synthetic.subset(name) not in SYNTHETIC_SUBSET_NAMES]
            if unknown:
                raise SweepSpecError(f"{self._where(table, row)}: preset {self.preset.name!r} makes synthetic data "
                                     f"({', '.join(SYNTHETIC_SUBSET_NAMES)}) but {row.base.name} tests on {unknown[0]!r}")
            self._data_overrides[key] = {
                "data.train_dirs": [str(self.data_dir / "train")],
                "data.test_sets": {name: self._synthetic_entry(name, entry) for name, entry in test_sets.items()},
            }
        return self._data_overrides[key]

    def _synthetic_entry(self, name: str, entry: str | dict[str, Any]) -> str | dict[str, Any]:
        """The entry with its path pointed at the synthetic subset that `name` reads (its last part, or that part's
        stand-in); per-set options (a mapping entry's lr_size, ...) are kept."""
        path = str(self._synthetic_test_dir(self.preset.synthetic.subset(name)))
        return {**entry, "path": path} if isinstance(entry, dict) else path

    def _synthetic_test_dir(self, subset: str) -> Path:
        return self.data_dir / subset if subset == "str_synth" else self.data_dir / "test" / subset

    def expand(self, seeds: list[int] | None = None, only: list[str] | None = None) -> Expansion:
        seeds = list(seeds or self.spec.seeds)
        tables = [table for table in self.spec.tables if table.runs_in(self.preset.name)]
        names = {row.name for table in tables for row in table.rows}
        missing = sorted(set(only or []) - names)
        if missing:
            raise SweepSpecError(f"{self.spec.path}: --only {missing[0]!r} is not a row of any table")
        wanted = self._with_dependencies(tables, set(only)) if only else None
        cells: dict[str, Cell] = {}
        by_row: dict[tuple[str, str], list[str]] = {}
        rows = [(table, row) for table in tables for row in table.rows
                if wanted is None or (table.id, row.name) in wanted]
        # trained (and parameter-free) rows first, then rows that start from them, then evaluation rows
        for table, row in sorted(rows, key=lambda pair: (pair[1].evaluate is not None, pair[1].init_from is not None)):
            built = self._cells(table, row, seeds, by_row) if row.evaluate is None else \
                self._evaluation_cells(table, row, cells, by_row)
            for cell in built:
                cell = cells.setdefault(cell.cell_id, cell)
                cell.members.append((table.id, row.name))
                by_row.setdefault((table.id, row.name), []).append(cell.cell_id)
        for cell in cells.values():
            for needed in cell.needs:
                cells[needed].keep_checkpoints = True
        return Expansion(cells, by_row, tables, self.data_dir)

    def _with_dependencies(self, tables: list[Table], only: set[str]) -> set[tuple[str, str]]:
        """--only rows, plus the rows they evaluate or start from (and those rows' own starting rows)."""
        rows = {(table.id, row.name): row for table in tables for row in table.rows}
        chosen = {key for key, row in rows.items() if row.name in only}
        for key in list(chosen):
            row = rows[key]
            needed = [row.init_from] + ([row.evaluate.of, row.evaluate.refine_with] if row.evaluate else [])
            for dependency in filter(None, needed):  # one not in this preset's tables fails later, by name
                chosen.update(filter(None, (dependency, getattr(rows.get(dependency), "init_from", None))))
        return chosen

    def _overrides(self, table: Table, row: Row) -> tuple[dict[str, Any], dict[str, Any]]:
        """The row's own overrides (the preset's vars filled in) and the preset data's (train_dirs, test_sets)."""
        data = self.data_overrides(table, row)  # a row's test sets are relocated into the preset's data
        own = {k: v for k, v in row.overrides.items() if not (data and k == "data.test_sets")}
        return fill_vars(own, self.preset.vars), data

    def _cells(self, table: Table, row: Row, seeds: list[int], by_row: dict[tuple[str, str], list[str]]) -> list[Cell]:
        row_overrides, data = self._overrides(table, row)
        overrides = {**self.preset.overrides_for(row.base), **data, **row_overrides}
        if row.init_from is None:
            return [self._cell(table, row, seed, overrides) for seed in seeds]
        if row.init_from not in by_row:
            raise SweepSpecError(f"{self._where(table, row)}: init_from {'/'.join(row.init_from)!r}, whose table does "
                                 f"not run in preset {self.preset.name!r}")
        starts = by_row[row.init_from]  # one cell per seed, in seed order
        return [self._cell(table, row, seed, {**overrides, INIT_KEY: str(self.out_dir / "cells" / start / CHECKPOINT)},
                           init_from=start) for seed, start in zip(seeds, starts)]

    def _cell(self, table: Table, row: Row, seed: int, overrides: dict[str, Any], init_from: str | None = None) -> Cell:
        config = self._resolve(self._where(table, row), row.subcommand, row.base, overrides, row.overrides)
        self._check_columns(table, row, config)
        digest = config_identity(row.subcommand, config, self.out_dir)
        generator = ((config.get("model") or {}).get("init_args") or {}).get("generator") or {}
        self._generators[digest] = str(generator.get("class_path"))
        return Cell(f"{digest}-s{seed}", digest, seed, row.subcommand, row.base, overrides, init_from=init_from,
                    **loads(config))

    def _evaluation_cells(self, table: Table, row: Row, cells: dict[str, Cell],
                          by_row: dict[tuple[str, str], list[str]]) -> list[Cell]:
        """One stisr-eval cell per seed on the evaluated cell of that seed; the evaluated cell itself when the row
        changes nothing of its test."""
        where = self._where(table, row)
        for reference in filter(None, (row.evaluate.of, row.evaluate.refine_with)):
            if reference not in by_row:
                raise SweepSpecError(f"{where}: evaluates {'/'.join(reference)!r}, whose table does not run in preset "
                                     f"{self.preset.name!r}")
        targets = [cells[cell_id] for cell_id in by_row[row.evaluate.of]]
        refine_with = row.evaluate.refine_with
        refiners = [cells[cell_id] for cell_id in by_row[refine_with]] if refine_with else None
        if refiners and not can_refine(class_of(self._generators[refiners[0].config_hash])):
            raise SweepSpecError(f"{where}: evaluate.refine_with {'/'.join(refine_with)!r} trains "
                                 f"{self._generators[refiners[0].config_hash]}, which cannot refine another "
                                 "generator's output (no refine_output)")
        row_overrides, data = self._overrides(table, row)
        trained = {**targets[0].overrides, **data}
        config = self._resolve(where, "test", row.base, {**trained, **row_overrides}, row.overrides)
        self._check_columns(table, row, config)
        key = targets[0].config_hash  # what the trained cell's own test ran (its test sets, not this row's)
        if key not in self._tested:
            self._tested[key] = self._resolve(where, "test", row.base, targets[0].overrides, {})
        if refiners is None and config == self._tested[key]:
            return targets
        evaluated = []
        for position, target in enumerate(targets):
            refiner = refiners[position] if refiners else None
            digest = config_identity("test", evaluation_config(config, self.out_dir / "cells", target, refiner),
                                     self.out_dir)
            evaluated.append(Cell(f"{digest}-s{target.seed}", digest, target.seed, "test", row.base,
                                  {**trained, **row_overrides}, evaluates=target.cell_id,
                                  refine_with=refiner.cell_id if refiner else None, **loads(config)))
        return evaluated

    def _check_columns(self, table: Table, row: Row, config: dict[str, Any]) -> None:
        pattern = producible_metrics(config)
        if pattern is None:
            return
        for column in table.columns:
            metric = self.spec.metric(column, self.preset)
            if not pattern.fullmatch(metric):
                raise SweepSpecError(f"{self._where(table, row)}: column {column.name!r}: no run can produce metric "
                                     f"{metric!r} (test sets and recognizers of {row.base.name} with preset "
                                     f"{self.preset.name!r})")


def loads(config: dict[str, Any]) -> dict[str, Any]:
    """What a resolved config reads with and loads: its readers (name -> class name) and official files."""
    recognizers = ((config.get("model") or {}).get("init_args") or {}).get("recognizers") or {}
    readers = {name: str((entry or {}).get("class_path", "?")).rsplit(".", 1)[-1] for name, entry in recognizers.items()}
    return {"readers": readers, "official_files": list(dict.fromkeys(official_references(config)))}


def first_missing_official_file(cells: list[Cell]) -> tuple[Cell, str] | None:
    """The first (cell, `official:<file>`) whose file is not in the weights directory."""
    for cell in cells:
        for reference in cell.official_files:
            if not official_path(reference).is_file():
                return cell, reference
    return None


def ensure_synthetic(expansion: Expansion, expander: Expander) -> None:
    """Makes the preset's synthetic data once; concurrent workers build in private folders, the first rename wins."""
    target, data = expansion.data_dir, expander.preset.synthetic
    if target is None or target.exists():
        return
    from stisr_lightning.data.synthetic import make_synthetic

    scratch = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"stisr-sweep: making synthetic data ({data.train} train, {data.test} test, seed {data.seed}) in {target}")
    make_synthetic(scratch, train=data.train, test=data.test, seed=data.seed, str_test=data.str_test,
                   workers=min(4, os.cpu_count() or 1))
    try:
        os.rename(scratch, target)
    except OSError:  # another worker finished first
        shutil.rmtree(scratch, ignore_errors=True)
