"""Pictures of sweep results, shared by `stisr-sweep` (a PNG per table beside its CSV) and notebooks/results.ipynb:
ours vs the paper per table, accuracy vs PSNR over cells, metrics vs sampling steps."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

Stats = dict[str, dict[str, pd.Series]]
"""column label -> stat (ours / std / paper / diff) -> values by row name"""
STEPS = re.compile(r"steps?\s*[=:]?\s*(\d+)|(\d+)\s*steps?", re.IGNORECASE)  # "steps=20", "20 steps"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def table_stats(flat: pd.DataFrame) -> tuple[list[str], Stats]:
    """Rows and per-column stats of a flat numeric table (columns `<group> <column> <stat>`, as in tables/<id>.csv)."""
    stats: Stats = {}
    for name in flat.columns:
        label, _, stat = str(name).rpartition(" ")
        stats.setdefault(label, {})[stat] = flat[name]
    return flat.index.tolist(), stats


def read_table(path: str | Path) -> tuple[list[str], Stats]:
    return table_stats(pd.read_csv(path, index_col=0))


def plot_table(table_id: str, rows: list[str], stats: Stats, path: Path) -> Path:
    """One panel per paper column (each on its own scale): a bar per row, ours solid beside the paper's hatched in
    the same colour; the rows named in a legend beside the panels."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    labels = list(stats)
    per_line = min(4, len(labels))
    lines = math.ceil(len(labels) / per_line)
    fig, axes = plt.subplots(lines, per_line, figsize=(2.6 * per_line + 3.5, 2.4 * lines + 0.6), squeeze=False)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = [palette[i % len(palette)] for i in range(len(rows))]
    x = np.arange(len(rows))
    with_paper = any("paper" in stats[label] for label in labels)
    for ax, label in zip(axes.flat, labels):
        ours = [stats[label]["ours"].get(row, np.nan) for row in rows]
        ax.bar(x - 0.2 if with_paper else x, ours, 0.4 if with_paper else 0.7, color=colours)
        if with_paper:
            paper = stats[label].get("paper", pd.Series(dtype=float))
            ax.bar(x + 0.2, [paper.get(row, np.nan) for row in rows], 0.4, color=colours, alpha=0.35, hatch="//")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.tick_params(labelsize=8)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    handles = [Patch(color=colour, label=row) for colour, row in zip(colours, rows)]
    if with_paper:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="the paper (hatched)"))
    fig.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1 - 3.4 / fig.get_figwidth(), 0.5))
    fig.suptitle(f"Table {table_id}: ours (solid) vs the paper (hatched)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 3.5 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_tradeoff(table_id: str, rows: list[str], stats: Stats, x: str, y: str, path: Path) -> Path:
    """Each row as a point of column `x` against column `y` (ours filled, the paper's hollow in the same colour), for
    tables whose paper plots a trade-off (fidelity vs accuracy)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, row in enumerate(rows):
        colour = palette[index % len(palette)]
        ax.scatter(stats[x]["ours"].get(row, np.nan), stats[y]["ours"].get(row, np.nan), color=colour, label=row)
        if "paper" in stats[x] and "paper" in stats[y]:
            ax.scatter(stats[x]["paper"].get(row, np.nan), stats[y]["paper"].get(row, np.nan), facecolors="none",
                       edgecolors=colour)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"Table {table_id}: {y} vs {x} (ours filled, the paper hollow)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_accuracy_vs_psnr(metrics: pd.DataFrame, names: pd.Series, path: Path) -> Path:
    """Every cell's average word accuracy against its average PSNR, one marker per (dataset, reader)."""
    plt = _pyplot()
    accuracy = [m.groups() for m in map(re.compile(r"test/(.+)/average/([^/]+)/acc$").match, metrics.columns) if m]
    psnr = {m.group(1) for m in map(re.compile(r"test/(.+)/average/psnr$").match, metrics.columns) if m}
    pairs = [(dataset, reader) for dataset, reader in accuracy if dataset in psnr]
    fig, ax = plt.subplots(figsize=(6, 4))
    for (dataset, reader), marker in zip(pairs, "osD^v<>px*"):
        x, y = metrics[f"test/{dataset}/average/psnr"], 100 * metrics[f"test/{dataset}/average/{reader}/acc"]
        ax.scatter(x, y, marker=marker, label=f"{reader} ({dataset})")
        for label, xi, yi in zip(names, x, y):
            ax.annotate(str(label).split("/")[-1], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("PSNR (dB)")
    ax.set_ylabel("word accuracy (%)")
    ax.set_title("Fidelity vs recognition accuracy (average over subsets)")
    if pairs:
        ax.legend(fontsize=8)
    return _save(fig, path)


def steps_of(name: str) -> int | None:
    match = STEPS.search(str(name))
    return int(next(g for g in match.groups() if g)) if match else None


def plot_steps(table_id: str, rows: list[str], stats: Stats, path: Path) -> Path | None:
    """Metrics against sampling steps when a table's rows (or columns) are step counts; None when they are not."""
    step_labels = {label: steps_of(label) for label in stats if steps_of(label) is not None}
    step_rows = {row: steps_of(row) for row in rows if steps_of(row) is not None}
    if len(step_rows) >= 2:  # rows are step counts: one curve per column
        order = sorted(step_rows, key=step_rows.get)
        series = {label: [stats[label]["ours"].loc[r] for r in order] for label in stats}
        xs = [step_rows[r] for r in order]
    elif len(step_labels) >= 2:  # columns are step counts: one curve per row
        order = sorted(step_labels, key=step_labels.get)
        series = {row: [stats[label]["ours"].loc[row] for label in order] for row in rows}
        xs = [step_labels[label] for label in order]
    else:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_title(f"Table {table_id}: metric vs sampling steps")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path
