"""`stisr-sweep`: train/evaluate every cell of a sweep file and print its tables beside the paper's numbers.

    stisr-sweep ablations/lemma.yaml --preset tiny              # run (or resume) and print the tables
    stisr-sweep ablations/lemma.yaml --preset small --workers 4 --storage postgresql://host/db
    stisr-sweep comparisons/lemma_textzoom --dry-run            # validate and list the cells
    stisr-sweep comparisons/lemma_textzoom --emit-slurm sweep.sbatch --workers 8 --storage postgresql://host/db
    stisr-sweep report ablations/lemma --preset tiny            # rebuild the tables from the store
    stisr-sweep export-wandb ablations/lemma --preset small     # W&B sweep configs for `wandb agent`
    stisr-sweep dashboard ablations/lemma --preset tiny         # W&B report (offline: its definition as JSON)
    stisr-sweep search/lemma_loss_weights --workers 2           # a `search:` file: an optuna study (best.yaml)
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from stisr_lightning.cli.parsing import ArgumentParser, one_line_errors
from stisr_lightning.sweeps.expand import Cell, Expander, Expansion, ensure_synthetic, first_missing_official_file
from stisr_lightning.sweeps.run import SweepRunner, stisr_train_command
from stisr_lightning.sweeps.spec import SweepSpec, SweepSpecError, load_spec, sweeps_root
from stisr_lightning.sweeps.store import DONE, FAILED, PENDING, CellStore, default_url
from stisr_lightning.sweeps.tables import write_tables
from stisr_lightning.sweeps.wandb_io import DEFAULT_PROJECT, CellLoggers, default_offline, log_aggregate, with_tracking
from stisr_lightning.weights import STRICT_WEIGHTS_ENV, WEIGHTS_DIR_ENV, missing_official_message, official_path, weights_dir


def build_parser(report: bool, command: str = "") -> ArgumentParser:
    parser = ArgumentParser(prog="stisr-sweep" + (f" {command}" if command else ""), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="sweep file: a path, or a name under sweeps/ (e.g. ablations/lemma.yaml)")
    parser.add_argument("--preset", default="tiny", help="tiny (CPU CI), small (one GPU) or full (the paper's recipe)")
    parser.add_argument("--out", type=Path, help="sweep folder (default runs/sweeps/<name>-<preset>)")
    parser.add_argument("--storage", help="SQLAlchemy URL of the results store (default sqlite:///<out>/store.db)")
    parser.add_argument("--only", nargs="+", metavar="ROW", help="run only these rows (by name)")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the sweep file's seeds")
    parser.add_argument("--weights-dir", type=Path,
                        help=f"folder of the official files that `official:<file>` names (default: ${WEIGHTS_DIR_ENV}, "
                             "else ./weights; `stisr-data weights check` lists them)")
    if command == "export-wandb":
        parser.add_argument("--to", type=Path, help="W&B sweep config YAML (default <out>/wandb_sweep.yaml)")
        return parser
    if command == "dashboard":
        parser.add_argument("--project", default=DEFAULT_PROJECT, help="W&B project of the sweep's runs")
        parser.add_argument("--entity", help="W&B entity (online: default the logged-in user's)")
        parser.add_argument("--to", type=Path, help="offline: the report definition (default <out>/dashboard.json)")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing definition file")
        return parser
    parser.add_argument("--no-wandb", dest="wandb", action="store_false",
                        help="no W&B grouping of cell runs and no aggregator run with the tables")
    if report:
        return parser
    parser.add_argument("--workers", type=int, default=1, help="cells run at once on this machine")
    parser.add_argument("--devices-per-worker", type=int, default=1, help="GPUs per worker (CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    parser.add_argument("--dry-run", action="store_true", help="validate, list the cells and their commands, stop")
    parser.add_argument("--emit-slurm", type=Path, metavar="FILE", help="write a SLURM array script (one task per worker)")
    parser.add_argument("--heartbeat", type=float, default=30.0, help="seconds between a worker's heartbeats")
    parser.add_argument("--stale-after", type=float, default=300.0,
                        help="a running claim without a heartbeat for this long is taken over")
    return parser


def _setup(args: argparse.Namespace) -> tuple[SweepSpec, Expander, Expansion, Path, float]:
    spec = load_spec(args.spec)
    if args.preset not in spec.presets:
        raise SweepSpecError(f"{spec.path}: no preset {args.preset!r} (presets: {', '.join(spec.presets)})")
    out = (args.out or Path("runs") / "sweeps" / f"{spec.name}-{args.preset}").resolve()
    began = time.perf_counter()
    expander = Expander(spec, spec.presets[args.preset], out)
    expansion = expander.expand(args.seeds, args.only)
    return spec, expander, expansion, out, time.perf_counter() - began


def print_dry_run(cells: list[Cell], out: Path, statuses: dict[str, str]) -> None:
    print(f"{len(cells)} cells (out: {out}; official files from {weights_dir()})")
    for cell in cells:
        members = ", ".join(f"{table}/{row}" for table, row in cell.members)
        print(f"\n{cell.cell_id} [{statuses.get(cell.cell_id, 'new')}] {members}")
        print("  readers: " + (", ".join(f"{name} ({kind})" for name, kind in cell.readers.items()) or "none"))
        files = [f"{official_path(ref).name}{'' if official_path(ref).is_file() else ' (missing)'}"
                 for ref in cell.official_files]
        print("  official files: " + (", ".join(files) or "none"))
        print("  " + shlex.join(stisr_train_command(cell, out / "cells" / cell.cell_id)))


def check_official_files(cells: list[Cell]) -> None:
    """Stops before anything runs when a cell names an official file the weights directory lacks."""
    missing = first_missing_official_file(cells)
    if missing is not None:
        cell, reference = missing
        members = ", ".join(f"{table}/{row}" for table, row in cell.members)
        raise SweepSpecError(f"cell {cell.cell_id} ({members}) needs {missing_official_message(reference)}")


def emit_slurm(path: Path, args: argparse.Namespace, spec: SweepSpec, out: Path, url: str) -> None:
    command = ["stisr-sweep", str(spec.path), "--preset", args.preset, "--out", str(out), "--storage", url,
               "--workers", "1", "--devices-per-worker", str(args.devices_per_worker)]
    command += ["--seeds", *map(str, args.seeds)] if args.seeds else []
    command += ["--only", *args.only] if args.only else []
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=stisr-sweep-{spec.name}",
        f"#SBATCH --array=0-{max(1, args.workers) - 1}",
        f"#SBATCH --gpus-per-task={args.devices_per_worker}",
        f"#SBATCH --output={out}/slurm/%A_%a.out",
        "# Each array task is one worker of the same sweep: all share the store below, claim pending cells one at a",
        "# time and exit when none is left; the last one to finish prints the complete tables.",
    ]
    if url.startswith("sqlite"):
        lines.append("# SQLite works for a few workers on one node; use a PostgreSQL URL across nodes (not SQLite on NFS).")
    lines += [f"cd {shlex.quote(str(sweeps_root(spec.path).parent))}", f"mkdir -p {shlex.quote(str(out / 'slurm'))}",
              shlex.join(command), ""]
    path.write_text("\n".join(lines))
    path.chmod(0o755)
    print(f"wrote {path}: sbatch {path}")


def print_tables(spec: SweepSpec, expander: Expander, expansion: Expansion, store: CellStore, out: Path) -> dict:
    records = store.records(expansion.cells)
    for _, text in write_tables(spec, expander.preset, expansion, records, out).values():
        print(f"\n{text}")
    print(f"tables: {out / 'tables'}")
    return records


def summarize(expansion: Expansion, records: dict, expand_s: float, runner: SweepRunner | None) -> int:
    statuses = [records[cell_id].status if cell_id in records else PENDING for cell_id in expansion.cells]
    count = {status: statuses.count(status) for status in set(statuses)}
    ran = len(runner.summary.ran) + len(runner.summary.failed) if runner else 0
    print(f"\n{len(expansion.cells)} cells: {count.get(DONE, 0)} done, {count.get(FAILED, 0)} failed, "
          f"{len(expansion.cells) - count.get(DONE, 0) - count.get(FAILED, 0)} pending/running; {ran} ran now")
    overheads = [r.overhead_s for r in records.values() if r.overhead_s is not None]
    line = f"engine overhead: expansion + validation {expand_s:.2f} s ({expand_s / max(1, len(expansion.cells)):.2f} s/cell)"
    if overheads:
        line += (f"; per cell outside stisr-train: mean {1000 * statistics.mean(overheads):.0f} ms, "
                 f"max {1000 * max(overheads):.0f} ms")
    print(line)
    for cell_id, record in records.items():
        if record.status == FAILED:
            members = ", ".join(f"{t}/{r}" for t, r in expansion.cells[cell_id].members)
            log = f"\n  log: {record.log_path}" if record.log_path and Path(record.log_path).is_file() else ""
            print(f"failed {cell_id} [{members}]: {record.error}{log}")
    if runner and runner.summary.interrupted:
        return 130
    return 1 if count.get(FAILED) else 0


def export_wandb(args: argparse.Namespace) -> int:
    from stisr_lightning.sweeps.wandb_io import wandb_sweep_configs, write_wandb_sweeps

    spec, expander, expansion, out, _ = _setup(args)
    configs = wandb_sweep_configs(spec, args.preset, expansion, CellLoggers(expander.resolver), sweeps_root(spec.path).parent)
    ensure_synthetic(expansion, expander)  # the exported configs point at the preset's data
    for path in write_wandb_sweeps(configs, args.to or out / "wandb_sweep.yaml"):
        print(f"wrote {path}: wandb sweep {path} && wandb agent <entity/project/sweep_id> (online only)")
    return 0


def dashboard(args: argparse.Namespace) -> int:
    from stisr_lightning.sweeps.dashboard import OFFLINE_ENTITY, build_dashboard, build_search_dashboard, publish
    from stisr_lightning.sweeps.search.spec import is_search_file, load_search_spec

    online = os.environ.get("WANDB_MODE") == "online"
    entity = args.entity or (None if online else OFFLINE_ENTITY)
    owner = {"entity": entity} if entity else {}
    if is_search_file(args.spec):
        spec = load_search_spec(args.spec)
        if args.preset not in spec.presets:
            raise SweepSpecError(f"{spec.path}: no preset {args.preset!r} (presets: {', '.join(spec.presets)})")
        out = (args.out or Path("runs") / "sweeps" / f"{spec.name}-{args.preset}").resolve()
        trials = out / "trials.md"
        report = build_search_dashboard(spec, args.preset, trials.read_text() if trials.is_file() else "",
                                        args.project, **owner)
    else:
        spec, expander, expansion, out, _ = _setup(args)
        url = args.storage or default_url(out)
        stored = args.storage or (out / "store.db").exists()
        records = CellStore(url).records(expansion.cells) if stored else {}
        texts = {table_id: text for table_id, (_, text) in write_tables(spec, expander.preset, expansion, records,
                                                                         out).items()} if records else {}
        report = build_dashboard(spec, args.preset, expansion, texts, args.project, **owner)
    target = args.to or out / "dashboard.json"
    if args.overwrite and not online:
        target.unlink(missing_ok=True)
    where = publish(report, target)
    print(f"W&B report: {where}" if online else
          f"wrote {where} (offline); to create it in W&B: wandb sync the runs, then WANDB_MODE=online "
          f"stisr-sweep dashboard {args.spec} --preset {args.preset}")
    return 0


def log_to_wandb(spec: SweepSpec, preset: str, expansion: Expansion, store: CellStore, out: Path, project: str) -> None:
    folder = log_aggregate(spec, preset, expansion, store, out, project)
    if folder is not None and os.environ.get("WANDB_MODE") == "offline":
        print(f"W&B (offline): tables in {folder}; upload with: wandb sync {out}/wandb/offline-run-* "
              f"{out}/cells/*/wandb/offline-run-*")


def run(argv: list[str]) -> int:
    command = argv[0] if argv and argv[0] in ("report", "export-wandb", "dashboard") else ""
    report = command == "report"
    args = build_parser(report, command).parse_args(argv[1:] if command else argv)
    default_offline()
    if args.weights_dir is not None:  # the cells' stisr-train processes inherit it
        os.environ[WEIGHTS_DIR_ENV] = str(args.weights_dir.resolve())
    if command == "export-wandb":
        return export_wandb(args)
    if command == "dashboard":
        return dashboard(args)
    from stisr_lightning.sweeps.search.spec import is_search_file  # optuna is imported for sweeps that use it only

    if is_search_file(args.spec):  # a `search:` block runs an optuna study instead of table cells
        from stisr_lightning.sweeps.search.runner import run_search

        return run_search(args, report_only=report)
    spec, expander, expansion, out, expand_s = _setup(args)
    cells, project = list(expansion.cells.values()), None
    if not report:
        check_official_files(cells)
    if expander.preset.strict_weights:  # the cells' stisr-train processes inherit it
        os.environ[STRICT_WEIGHTS_ENV] = "1"
    if args.wandb:
        cells, project = with_tracking(cells, spec, args.preset, CellLoggers(expander.resolver))
    url = args.storage or default_url(out)
    if not report and args.emit_slurm:
        emit_slurm(args.emit_slurm, args, spec, out, url)
        return 0
    if not report and args.dry_run:
        known = out / "store.db"
        store = CellStore(url) if args.storage or known.exists() else None
        statuses = {k: r.status for k, r in store.records(expansion.cells).items()} if store else {}
        print_dry_run(cells, out, statuses)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    store = CellStore(url)
    runner = None
    if not report:
        runner = SweepRunner(store, cells, out, workers=args.workers,
                             devices_per_worker=args.devices_per_worker, cwd=sweeps_root(spec.path).parent,
                             heartbeat_s=args.heartbeat, stale_after_s=args.stale_after)
        runner.register(args.retry_failed)
        if store.pending(expansion.cells):
            ensure_synthetic(expansion, expander)
        runner.run()
    records = print_tables(spec, expander, expansion, store, out)
    finished = all(cell_id in records and records[cell_id].status in (DONE, FAILED) for cell_id in expansion.cells)
    if args.wandb and (report or finished):  # with several engines on one sweep, the ones that end it log the tables
        log_to_wandb(spec, args.preset, expansion, store, out, project or DEFAULT_PROJECT)
    return summarize(expansion, records, expand_s, runner)


@one_line_errors("stisr-sweep")
def main(argv: list[str] | None = None) -> None:
    try:
        code = run(sys.argv[1:] if argv is None else argv)
    except SweepSpecError as error:
        print(f"stisr-sweep: error: {error}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
