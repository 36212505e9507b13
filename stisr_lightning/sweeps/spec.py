"""Sweep files: a paper's tables as YAML (format documented in sweeps/README.md).

Loading checks the structure only (keys, types, names); whether each override names a real config key and whether
each column's metric can be produced is checked in `expand.py`, where the experiment parser is at hand.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stisr_lightning.paths import recipes_root

SUBCOMMANDS = ("fit", "test")

TOP_KEYS = {"name", "paper", "description", "seeds", "vars", "presets", "tables", "reference"}
TABLE_KEYS = {"id", "title", "base", "subcommand", "rows", "columns", "reference", "reference_table", "notes", "tradeoff",
              "presets"}
ROW_KEYS = {"name", "overrides", "grid", "base", "subcommand", "evaluate", "init_from"}
EVALUATE_KEYS = {"of", "refine_with"}
COLUMN_KEYS = {"name", "metric", "scale", "group", "decimals", "reference_column"}
PRESET_KEYS = {"description", "overrides", "base_overrides", "synthetic", "vars", "strict_weights"}
SYNTHETIC_KEYS = {"train", "test", "seed", "str_test"}
SYNTHETIC_SUBSET_NAMES = ("easy", "medium", "hard", "str_synth")


class SweepSpecError(ValueError):
    """A sweep file is invalid; the message is one line naming file, table, row and key."""


@dataclass(frozen=True)
class Column:
    name: str
    metric: str  # a results.json metric key; may use {var} placeholders filled from the preset's vars
    scale: float = 1.0
    group: str | None = None
    decimals: int = 2
    reference_column: str | None = None

    @property
    def reference_key(self) -> str:
        """How reference CSVs name this column: `reference_column`, else `group/name`, else `name`."""
        return self.reference_column or (f"{self.group}/{self.name}" if self.group else self.name)


@dataclass(frozen=True)
class Evaluation:
    """A row that tests another row's trained checkpoint (stisr-eval) instead of training: `of` and `refine_with`
    are (table id, row name); the row's overrides change only the test (sampling steps, metrics)."""

    of: tuple[str, str]
    refine_with: tuple[str, str] | None = None  # a trained row whose generator refines the output (--refine-with)


@dataclass(frozen=True)
class Row:
    name: str
    base: Path | None  # None for an evaluation row until it is linked to the row it evaluates
    subcommand: str
    overrides: dict[str, Any] = field(default_factory=dict)
    evaluate: Evaluation | None = None
    init_from: tuple[str, str] | None = None
    """A trained row whose best checkpoint this row's generator starts from (`model.init_args.generator_weights`):
    a second training stage, such as fine-tuning a recognizer on a trained SR model's output."""


@dataclass(frozen=True)
class Reference:
    value: float
    source: str


@dataclass
class Table:
    id: str
    title: str
    rows: list[Row]
    columns: list[Column]
    notes: str = ""
    reference: dict[tuple[str, str], Reference] = field(default_factory=dict)  # (row, column.reference_key)
    presets: list[str] | None = None  # only these presets run the table (e.g. real STR benchmarks: full only)
    reference_table: str | None = None  # the reference CSV's table id, when a paper table is split (T1 x2 / x4)
    tradeoff: tuple[Column, Column] | None = None  # (x, y) columns the paper plots against each other

    def runs_in(self, preset: str) -> bool:
        return self.presets is None or preset in self.presets


@dataclass(frozen=True)
class Synthetic:
    """Synthetic data a preset needs (`make_synthetic(out, train, test, seed, str_test=...)`): made once, cached by
    the engine. `str_test` adds the STR-style set (small images, `data.str_benchmarks`' degradation) for test
    sets named `str_synth`. `standins` lets test sets named after real data read a synthetic subset instead (IC13 ->
    easy), so one row serves every preset; tables say so in their notes."""

    train: int
    test: int
    seed: int = 0
    str_test: int = 0
    standins: dict[str, str] = field(default_factory=dict)

    def subset(self, test_set_name: str) -> str:
        """The synthetic subset a test set named '<...>/<last>' reads: `last`, or its stand-in."""
        last = test_set_name.rsplit("/", 1)[-1]
        return self.standins.get(last, last)


@dataclass(frozen=True)
class Preset:
    name: str
    overrides: dict[str, Any]
    synthetic: Synthetic | None
    vars: dict[str, str]
    description: str = ""
    base_overrides: dict[Path, dict[str, Any]] = field(default_factory=dict)  # base experiment -> its extra overrides
    strict_weights: bool = False
    """Every helper network and torch reader of every cell must load a weights file (STISR_STRICT_WEIGHTS=1 in the
    cells): the paper's protocol, never a random helper."""

    def overrides_for(self, base: Path) -> dict[str, Any]:
        """The preset's overrides for cells of this base experiment (`overrides`, then its `base_overrides`)."""
        return {**self.overrides, **self.base_overrides.get(base, {})}


@dataclass
class SweepSpec:
    path: Path
    name: str
    paper: str
    seeds: list[int]
    presets: dict[str, Preset]
    tables: list[Table]
    description: str = ""

    def metric(self, column: Column, preset: Preset) -> str:
        return column.metric.format_map(preset.vars)


def resolve_spec_path(spec: str | Path) -> Path:
    """A path, or a name under `sweeps/` (cwd first, then the recipes root: `stisr_lightning.paths`); `.yaml`
    optional."""
    names = (str(spec), f"{spec}.yaml")
    for candidate in [Path(name) for name in names] + [Path("sweeps") / name for name in names]:
        if candidate.is_file():
            return candidate.resolve()
    try:
        sweeps = recipes_root() / "sweeps"
    except FileNotFoundError as error:
        raise SweepSpecError(f"sweep file {spec!r} not found in . or sweeps/, and {error}") from None
    for name in names:
        if (sweeps / name).is_file():
            return (sweeps / name).resolve()
    raise SweepSpecError(f"sweep file {spec!r} not found (looked in ., sweeps/ and {sweeps})")


def sweeps_root(path: Path) -> Path:
    """The `sweeps/` folder a sweep file lives in (its repo's experiments/ is beside it)."""
    for parent in path.parents:
        if parent.name == "sweeps":
            return parent
    return recipes_root() / "sweeps"


def spec_error(where: str, message: str) -> SweepSpecError:
    return SweepSpecError(f"{where}: {message}")


def check_keys(where: str, data: Any, allowed: set[str], what: str) -> None:
    if not isinstance(data, dict):
        raise spec_error(where, f"{what} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise spec_error(where, f"unknown {what} key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _overrides(where: str, data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(key, str) and key for key in data):
        raise spec_error(where, "overrides must map dotted config keys to values")
    return dict(data)


def base_experiment(where: str, value: Any, experiments: Path) -> Path:
    if not isinstance(value, str):
        raise spec_error(where, f"base must be an experiment YAML path relative to {experiments}, got {value!r}")
    path = experiments / value
    if not path.is_file():
        raise spec_error(where, f"base experiment {value!r} not found in {experiments}")
    return path.resolve()


def _subcommand(where: str, value: Any) -> str:
    if value not in SUBCOMMANDS:
        raise spec_error(where, f"subcommand must be one of {', '.join(SUBCOMMANDS)}, got {value!r}")
    return value


def _row_reference(where: str, value: Any, key: str, table_id: str) -> tuple[str, str]:
    """`TABLE/ROW`, or `ROW` of the same table (a row name may contain '/'; checked when the tables are linked)."""
    if not isinstance(value, str) or not value:
        raise spec_error(where, f"{key} must name a row: 'ROW' (this table) or 'TABLE/ROW'")
    return (table_id, value)


def _evaluation(where: str, entry: dict, table_id: str) -> Evaluation | None:
    data = entry.get("evaluate")
    if data is None:
        return None
    check_keys(where, data, EVALUATE_KEYS, "evaluate")
    if "of" not in data:
        raise spec_error(where, "evaluate needs `of`: the row whose trained checkpoint this row tests")
    clash = sorted({"base", "subcommand"} & set(entry))
    if clash:
        raise spec_error(where, f"an evaluate row takes `{clash[0]}` from the row it evaluates")
    refine = data.get("refine_with")
    return Evaluation(_row_reference(where, data["of"], "evaluate.of", table_id),
                      None if refine is None else _row_reference(where, refine, "evaluate.refine_with", table_id))


def _link_rows(where: str, tables: list[Table]) -> None:
    """Resolves the row references of evaluation rows and `init_from` rows to (table id, row name); an evaluation
    row takes its base from the evaluated row. Only trained (`fit`) rows can be evaluated or started from, and not
    evaluation rows or rows that themselves start from another (one level of dependencies)."""
    rows = {(table.id, row.name): row for table in tables for row in table.rows}

    def target(here: str, table_id: str, reference: str, key: str) -> tuple[str, str]:
        table_part, _, row_part = reference.partition("/")
        candidates = [(table_id, reference)] + ([(table_part, row_part)] if row_part else [])
        found = next((candidate for candidate in candidates if candidate in rows), None)
        if found is None:
            raise spec_error(here, f"{key}: no row {reference!r} (write 'ROW' for this table or 'TABLE/ROW')")
        row = rows[found]
        if row.evaluate is not None:
            raise spec_error(here, f"{key}: {'/'.join(found)!r} is itself an evaluate row (name its `of` row)")
        if row.init_from is not None and key == "init_from":
            raise spec_error(here, f"{key}: {'/'.join(found)!r} itself starts from another row (one stage back only)")
        if row.subcommand != "fit":
            raise spec_error(here, f"{key}: {'/'.join(found)!r} is not trained (subcommand {row.subcommand}), so "
                        "it leaves no checkpoint")
        return found

    for table in tables:
        for position, row in enumerate(table.rows):
            here = f"{where}: table {table.id}: row {row.name!r}"
            if row.init_from is not None:
                start = target(here, *row.init_from, "init_from")
                table.rows[position] = Row(row.name, row.base, row.subcommand, row.overrides, init_from=start)
            if row.evaluate is None:
                continue
            of, refine = target(here, *row.evaluate.of, "evaluate.of"), row.evaluate.refine_with
            refine = refine and target(here, *refine, "evaluate.refine_with")
            table.rows[position] = Row(row.name, rows[of].base, "test", row.overrides, Evaluation(of, refine))


def _rows(where: str, entries: Any, base: Path | None, subcommand: str, experiments: Path, table_id: str) -> list[Row]:
    if not isinstance(entries, list) or not entries:
        raise spec_error(where, "rows must be a non-empty list")
    rows: list[Row] = []
    for position, entry in enumerate(entries):
        label = entry.get("name", f"#{position}") if isinstance(entry, dict) else f"#{position}"
        here = f"{where}: row {label!r}"
        check_keys(here, entry, ROW_KEYS, "row")
        evaluation = _evaluation(here, entry, table_id)
        init_from = _row_reference(here, entry["init_from"], "init_from", table_id) if "init_from" in entry else None
        if init_from and (evaluation or entry.get("subcommand", subcommand) != "fit"):
            raise spec_error(here, "init_from is for trained (fit) rows: it names the row whose checkpoint training starts from")
        row_base = base_experiment(here, entry["base"], experiments) if "base" in entry else base
        if row_base is None and evaluation is None:
            raise spec_error(here, "no base experiment (set `base` on the table or the row)")
        row_sub = "test" if evaluation else _subcommand(here, entry.get("subcommand", subcommand))
        overrides = _overrides(here, entry.get("overrides"))
        if "grid" not in entry:
            if "name" not in entry or not isinstance(entry["name"], str):
                raise spec_error(here, "a row needs a `name` (or a `grid`)")
            rows.append(Row(entry["name"], row_base, row_sub, overrides, evaluation, init_from))
            continue
        grid = entry["grid"]
        if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
            raise spec_error(here, "grid must map dotted config keys to non-empty lists of values")
        template = entry.get("name")
        for values in itertools.product(*grid.values()):
            point = dict(zip(grid, values))
            short = {key.rsplit(".", 1)[-1]: value for key, value in point.items()}
            try:
                name = template.format(**short) if template else ", ".join(f"{k}={v}" for k, v in short.items())
            except (KeyError, IndexError) as error:
                raise spec_error(here, f"grid name template {template!r} uses unknown field {error}") from None
            rows.append(Row(name, row_base, row_sub, {**overrides, **point}, evaluation, init_from))
    names = [row.name for row in rows]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise spec_error(where, f"duplicate row name {duplicates[0]!r}")
    return rows


def _columns(where: str, entries: Any) -> list[Column]:
    if not isinstance(entries, list) or not entries:
        raise spec_error(where, "columns must be a non-empty list")
    columns = []
    for position, entry in enumerate(entries):
        here = f"{where}: column {entry.get('name', f'#{position}') if isinstance(entry, dict) else f'#{position}'!r}"
        check_keys(here, entry, COLUMN_KEYS, "column")
        if not isinstance(entry.get("name"), str) or not isinstance(entry.get("metric"), str):
            raise spec_error(here, "a column needs a string `name` and a string `metric` (a results.json metric key)")
        if not isinstance(entry.get("scale", 1.0), (int, float)) or not isinstance(entry.get("decimals", 2), int):
            raise spec_error(here, "scale must be a number and decimals an integer")
        columns.append(Column(**entry))
    labels = [(column.group, column.name) for column in columns]
    duplicates = [label for label in labels if labels.count(label) > 1]
    if duplicates:
        raise spec_error(where, f"duplicate column {'/'.join(filter(None, duplicates[0]))!r}")
    return columns


def _inline_reference(where: str, data: Any, table: Table) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        raise spec_error(where, "reference must map row names to a list (column order) or a mapping of column -> value")
    rows = {row.name for row in table.rows}
    for row, values in data.items():
        if row not in rows:
            raise spec_error(where, f"reference row {row!r} is not a row of the table")
        if isinstance(values, list):
            if len(values) != len(table.columns):
                raise spec_error(where, f"reference row {row!r} has {len(values)} values for {len(table.columns)} columns")
            values = {column.reference_key: value for column, value in zip(table.columns, values)}
        if not isinstance(values, dict):
            raise spec_error(where, f"reference row {row!r} must be a list or a mapping")
        keys = {column.reference_key for column in table.columns}
        for key, value in values.items():
            if key not in keys:
                raise spec_error(where, f"reference column {key!r} (row {row!r}) is not a column of the table")
            if value is not None:
                table.reference[(row, key)] = Reference(float(value), "sweep file")


def _normalized(text: str) -> str:
    return "".join(str(text).lower().split())


def read_reference_csv(path: Path, tables: list[Table]) -> None:
    """Adds `table,row,column,value,source` records to the tables they name; rows/columns we lack are skipped.
    Numbers already given inline in the sweep file win."""
    if not path.is_file():
        return
    by_id: dict[str, list[Table]] = {}
    for table in tables:
        by_id.setdefault(_normalized(table.reference_table or table.id), []).append(table)
    with open(path, newline="") as handle:
        for record in csv.DictReader(handle):
            if record.get("value") in (None, ""):
                continue
            for table in by_id.get(_normalized(record.get("table", "")), []):
                _add_reference(path, table, record)


def _add_reference(path: Path, table: Table, record: dict[str, str]) -> None:
    rows = {_normalized(row.name): row.name for row in table.rows}
    columns = {_normalized(column.reference_key): column.reference_key for column in table.columns}
    row, column = rows.get(_normalized(record["row"])), columns.get(_normalized(record["column"]))
    if row and column:
        try:
            value = float(str(record["value"]).rstrip("%"))
        except ValueError:
            raise SweepSpecError(f"{path}: table {table.id}: value {record['value']!r} is not a number") from None
        table.reference.setdefault((row, column), Reference(value, record.get("source") or path.name))


def _base_overrides(where: str, data: Any, experiments: Path | None) -> dict[Path, dict[str, Any]]:
    if data is None:
        return {}
    if experiments is None:
        raise spec_error(where, "base_overrides is for sweep files with tables (a search has one base: use overrides)")
    if not isinstance(data, dict):
        raise spec_error(where, "base_overrides must map base experiments (relative to experiments/) to overrides")
    return {base_experiment(where, base, experiments): _overrides(f"{where}: base_overrides {base!r}", entry)
            for base, entry in data.items()}


def parse_presets(where: str, data: Any, default_vars: dict[str, str], experiments: Path | None = None) -> dict[str, Preset]:
    if not isinstance(data, dict) or not data:
        raise spec_error(where, "presets must map preset names (tiny, small, full) to settings")
    presets = {}
    for name, entry in data.items():
        here = f"{where}: preset {name!r}"
        check_keys(here, entry, PRESET_KEYS, "preset")
        synthetic = entry.get("synthetic")
        if synthetic is not None:
            check_keys(here, synthetic, SYNTHETIC_KEYS | {"standins"}, "synthetic")
            if not all(isinstance(synthetic.get(key, 0), int) for key in SYNTHETIC_KEYS) or "train" not in synthetic:
                raise spec_error(here, "synthetic needs integer train, test (and optional seed)")
            standins = string_map(here, synthetic.get("standins"), "synthetic.standins")
            wrong = [name for name, subset in standins.items() if subset not in SYNTHETIC_SUBSET_NAMES]
            if wrong:
                raise spec_error(here, f"synthetic.standins.{wrong[0]}: {standins[wrong[0]]!r} is not a synthetic subset "
                                  f"({', '.join(SYNTHETIC_SUBSET_NAMES)})")
            synthetic = Synthetic(**{**synthetic, "standins": standins})
        variables = {**default_vars, **string_map(here, entry.get("vars"), "vars")}
        overrides = _overrides(here, entry.get("overrides"))
        strict = entry.get("strict_weights", False)
        if not isinstance(strict, bool):
            raise spec_error(here, f"strict_weights must be true or false, got {strict!r}")
        presets[name] = Preset(name, overrides, synthetic, variables, entry.get("description", ""),
                               _base_overrides(here, entry.get("base_overrides"), experiments), strict)
    return presets


def _tradeoff(where: str, data: Any, columns: list[Column]) -> tuple[Column, Column] | None:
    """`tradeoff: {x: PSNR, y: CRNN/Average}`: two of the table's columns (as the reference CSV names them)."""
    if data is None:
        return None
    if not isinstance(data, dict) or set(data) != {"x", "y"}:
        raise spec_error(where, "tradeoff must be {x: <column>, y: <column>}")
    by_key = {column.reference_key: column for column in columns}
    unknown = [str(data[axis]) for axis in ("x", "y") if data[axis] not in by_key]
    if unknown:
        raise spec_error(where, f"tradeoff: no column {unknown[0]!r} (columns: {', '.join(by_key)})")
    return by_key[data["x"]], by_key[data["y"]]


def _table_presets(where: str, data: Any, presets: dict[str, Preset]) -> list[str] | None:
    if data is None:
        return None
    if not isinstance(data, list) or not data or not all(isinstance(name, str) for name in data):
        raise spec_error(where, "presets must be a non-empty list of preset names")
    unknown = [name for name in data if name not in presets]
    if unknown:
        raise spec_error(where, f"presets: no preset {unknown[0]!r} (presets: {', '.join(presets)})")
    return list(data)


def string_map(where: str, data: Any, what: str) -> dict[str, str]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise spec_error(where, f"{what} must be a mapping")
    return {str(key): str(value) for key, value in data.items()}


def read_spec_yaml(spec: str | Path) -> tuple[Path, Any]:
    """The spec's path and parsed YAML; invalid YAML is a one-line error naming the file."""
    path = resolve_spec_path(spec)
    try:
        return path, yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SweepSpecError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None


def load_spec(spec: str | Path) -> SweepSpec:
    path, data = read_spec_yaml(spec)
    where = str(path)
    check_keys(where, data, TOP_KEYS, "top-level")
    for key in ("name", "paper", "tables", "presets"):
        if key not in data:
            raise spec_error(where, f"missing top-level key {key!r}")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(seed, int) for seed in seeds):
        raise spec_error(where, "seeds must be a non-empty list of integers")
    root = sweeps_root(path)
    experiments = root.parent / "experiments"
    default_vars = string_map(where, data.get("vars"), "vars")
    presets = parse_presets(where, data["presets"], default_vars, experiments)
    if not isinstance(data["tables"], list) or not data["tables"]:
        raise spec_error(where, "tables must be a non-empty list")
    tables: list[Table] = []
    for position, entry in enumerate(data["tables"]):
        here = f"{where}: table {entry.get('id', f'#{position}') if isinstance(entry, dict) else f'#{position}'}"
        check_keys(here, entry, TABLE_KEYS, "table")
        for key in ("id", "rows", "columns"):
            if key not in entry:
                raise spec_error(here, f"missing table key {key!r}")
        base = base_experiment(here, entry["base"], experiments) if "base" in entry else None
        subcommand = _subcommand(here, entry.get("subcommand", "fit"))
        table = Table(
            id=str(entry["id"]),
            title=str(entry.get("title", entry["id"])),
            rows=_rows(here, entry["rows"], base, subcommand, experiments, str(entry["id"])),
            columns=_columns(here, entry["columns"]),
            notes=str(entry.get("notes", "")),
            presets=_table_presets(here, entry.get("presets"), presets),
            reference_table=str(entry["reference_table"]) if "reference_table" in entry else None,
        )
        for column in table.columns:
            for preset in (p for p in presets.values() if table.runs_in(p.name)):
                try:
                    column.metric.format_map(preset.vars)
                except (KeyError, ValueError) as error:
                    raise spec_error(f"{here}: column {column.name!r}", f"metric {column.metric!r}: unknown var {error} "
                                f"in preset {preset.name!r}") from None
        table.tradeoff = _tradeoff(here, entry.get("tradeoff"), table.columns)
        _inline_reference(here, entry.get("reference"), table)
        tables.append(table)
    ids = [table.id for table in tables]
    if len(set(ids)) != len(ids):
        raise spec_error(where, f"duplicate table id {next(i for i in ids if ids.count(i) > 1)!r}")
    _link_rows(where, tables)
    reference = data.get("reference", f"references/{data['paper']}.csv")
    if not isinstance(reference, str):
        raise spec_error(where, "reference must be a CSV path relative to sweeps/ (table,row,column,value,source)")
    read_reference_csv(root / reference, tables)
    return SweepSpec(path, str(data["name"]), str(data["paper"]), seeds, presets, tables, data.get("description", ""))
