"""Paper-shaped tables (DESIGN.md contract 5): rows and columns as in the paper, ours (mean +/- std over seeds)
beside the paper's number and the difference. Numeric DataFrames for CSV (and W&B Tables); formatted ones for
Markdown and LaTeX."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from stisr_lightning.sweeps.expand import Expansion
from stisr_lightning.sweeps.plots import plot_table, plot_tradeoff, table_stats
from stisr_lightning.sweeps.spec import Column, Preset, SweepSpec, Table
from stisr_lightning.sweeps.store import DONE, CellRecord

OURS, STD, PAPER, DIFF = "ours", "std", "paper", "diff"
MISSING = "-"
LEGEND = "cell: ours [± std over seeds] / paper (ours - paper)"


def _column_key(column: Column, stat: str) -> tuple[str, ...]:
    return (column.group or "", column.name, stat)


def build_table(spec: SweepSpec, preset: Preset, table: Table, expansion: Expansion,
                records: dict[str, CellRecord]) -> pd.DataFrame:
    """Numeric table: index = row names, columns = (group, column, stat) with stat in ours/std/paper/diff
    (std only with several seeds, paper/diff only when the table has reference numbers)."""
    seeds = max((len(ids) for ids in expansion.by_row.values()), default=1)
    stats = [OURS] + ([STD] if seeds > 1 else []) + ([PAPER, DIFF] if table.reference else [])
    rows = [row.name for row in table.rows if (table.id, row.name) in expansion.by_row]
    data: dict[tuple[str, ...], list[float]] = {}
    for column in table.columns:
        metric = spec.metric(column, preset)
        means, stds, papers = [], [], []
        for row in rows:
            values = []
            for cell_id in expansion.by_row[(table.id, row)]:
                record = records.get(cell_id)
                if record is not None and record.status == DONE and record.results:
                    value = record.results.get("metrics", {}).get(metric)
                    if value is not None:
                        values.append(float(value) * column.scale)
            means.append(float(np.mean(values)) if values else math.nan)
            stds.append(float(np.std(values, ddof=1)) if len(values) > 1 else math.nan)
            reference = table.reference.get((row, column.reference_key))
            papers.append(reference.value if reference else math.nan)
        by_stat = {OURS: means, STD: stds, PAPER: papers, DIFF: list(np.subtract(means, papers))}
        for stat in stats:
            data[_column_key(column, stat)] = by_stat[stat]
    frame = pd.DataFrame(data, index=pd.Index(rows, name="Method"))
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["group", "column", "stat"])
    if not any(column.group for column in table.columns):
        frame.columns = frame.columns.droplevel("group")
    return frame


def format_table(table: Table, frame: pd.DataFrame) -> pd.DataFrame:
    """One printable cell per paper column: `ours [± std] / paper (ours - paper)`; missing numbers as '-'."""
    out = {}
    for column in table.columns:
        label = (column.group or "", column.name) if frame.columns.nlevels == 3 else (column.name,)
        places = column.decimals
        get = lambda stat: frame[(*label, stat)] if (*label, stat) in frame.columns else None  # noqa: E731
        ours, std, paper, diff = get(OURS), get(STD), get(PAPER), get(DIFF)
        cells = []
        for i, value in enumerate(ours):
            text = MISSING if pd.isna(value) else f"{value:.{places}f}"
            if std is not None and not pd.isna(std.iloc[i]):
                text += f" ± {std.iloc[i]:.{places}f}"
            if paper is not None and not pd.isna(paper.iloc[i]):
                text += f" / {paper.iloc[i]:.{places}f}"
                text += "" if pd.isna(diff.iloc[i]) else f" ({diff.iloc[i]:+.{places}f})"
            cells.append(text)
        out[label] = cells
    formatted = pd.DataFrame(out, index=frame.index)
    formatted.columns = pd.MultiIndex.from_tuples(list(out))
    return formatted


def flat_columns(frame: pd.DataFrame) -> pd.DataFrame:
    flat = frame.copy()
    flat.columns = [" ".join(part for part in key if part) for key in frame.columns]
    return flat


def _latex_escape(text: str) -> str:
    for raw, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(raw, escaped)
    return text.replace("±", r"$\pm$")


def to_latex(formatted: pd.DataFrame, caption: str) -> str:
    escaped = formatted.map(_latex_escape)
    escaped.index = [_latex_escape(name) for name in formatted.index]
    escaped.index.name = formatted.index.name
    escaped.columns = pd.MultiIndex.from_tuples([tuple(_latex_escape(p) for p in key) for key in formatted.columns])
    return escaped.to_latex(escape=False, multicolumn=True, multicolumn_format="c", caption=_latex_escape(caption))


def to_markdown(formatted: pd.DataFrame) -> str:
    return flat_columns(formatted).to_markdown()


def write_tables(spec: SweepSpec, preset: Preset, expansion: Expansion, records: dict[str, CellRecord],
                 out_dir: Path) -> dict[str, tuple[pd.DataFrame, str]]:
    """Writes <out>/tables/<id>.{md,csv,tex,png} (the PNG: ours vs the paper; `<id>-tradeoff.png` for a table with
    `tradeoff` columns); returns table id -> (numeric frame, printable text)."""
    folder = Path(out_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for table in expansion.tables:
        if not any(key[0] == table.id for key in expansion.by_row):
            continue
        frame = build_table(spec, preset, table, expansion, records)
        formatted = format_table(table, frame)
        heading = f"{spec.name} {table.id}: {table.title} (preset {preset.name})"
        legend = LEGEND if table.reference else "cell: ours [± std over seeds]"
        text = f"{heading}\n\n{to_markdown(formatted)}\n\n{legend}." + (f" {table.notes.strip()}" if table.notes else "")
        (folder / f"{table.id}.md").write_text(f"## {text}")
        flat_columns(frame).to_csv(folder / f"{table.id}.csv")
        rows, stats = table_stats(flat_columns(frame))
        plot_table(table.id, rows, stats, folder / f"{table.id}.png")
        if table.tradeoff:
            x, y = (" ".join(filter(None, (column.group, column.name))) for column in table.tradeoff)
            plot_tradeoff(table.id, rows, stats, x, y, folder / f"{table.id}-tradeoff.png")
        (folder / f"{table.id}.tex").write_text(to_latex(formatted, heading))
        written[table.id] = (frame, text)
    return written
