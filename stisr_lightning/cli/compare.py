"""`stisr-compare RUN_DIR...`: one table of several runs' results.json, a row per run.

    stisr-compare runs/bicubic runs/tsrn [--dataset synthetic]

Columns: accuracy (%) per recognizer x subset (and the size-weighted average), then PSNR and SSIM of the average.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from stisr_lightning.cli.parsing import ArgumentParser, one_line_errors


def load_results(run_dir: str | Path) -> dict[str, float]:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise SystemExit(f"stisr-compare: {path} not found (has the run finished its test stage?)")
    return json.loads(path.read_text())["metrics"]


def comparison_table(runs: dict[str, dict[str, float]], dataset: str) -> pd.DataFrame:
    prefix = f"test/{dataset}/"
    rows = {}
    for name, metrics in runs.items():
        row = {}
        for key, value in metrics.items():
            if not key.startswith(prefix):
                continue
            parts = key[len(prefix):].split("/")  # subset/recognizer/acc or subset/psnr
            if len(parts) == 3 and parts[2] == "acc":
                row[f"{parts[1]}/{parts[0]}"] = None if value is None else 100.0 * value
            elif len(parts) == 2 and parts[0] == "average" and parts[1] in ("psnr", "ssim"):
                row[parts[1]] = value
        rows[name] = row
    table = pd.DataFrame(rows).T
    accuracy = sorted((c for c in table.columns if "/" in c), key=_column_order)
    return table[accuracy + [c for c in ("psnr", "ssim") if c in table.columns]]


SUBSET_ORDER = {"easy": 0, "medium": 1, "hard": 2, "average": 99}


def _column_order(column: str) -> tuple:
    recognizer, subset = column.split("/")
    return recognizer, SUBSET_ORDER.get(subset, 50), subset


@one_line_errors("stisr-compare")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="stisr-compare", description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories (each with results.json)")
    parser.add_argument("--dataset", default="synthetic", help="dataset part of the metric keys")
    args = parser.parse_args(argv)
    table = comparison_table({Path(run).name: load_results(run) for run in args.runs}, args.dataset)
    if table.empty:
        raise SystemExit(f"stisr-compare: no 'test/{args.dataset}/...' metrics in these runs")
    print(table.to_markdown(floatfmt=".2f"))


if __name__ == "__main__":
    main()
