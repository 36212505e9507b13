"""`stisr-data`: make synthetic TextZoom-format data, materialize STR benchmarks, inspect LMDBs, calibrate readers,
check the official weights directory."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from stisr_lightning.cli.parsing import ArgumentParser, image_size, one_line_errors
from stisr_lightning.data.str_benchmarks import materialize_str_benchmark
from stisr_lightning.data.synthetic import make_synthetic
from stisr_lightning.data.textzoom import BLANK_STD, LOW_CONTRAST_RANGE, inspect_lmdb
from stisr_lightning.metrics.calibration import (
    BICUBIC_BAND,
    MIN_HR_GAIN,
    calibrate_subset,
    calibration_frame,
    paper_rows,
    subset_frame,
    subset_paths,
)
from stisr_lightning.models.recognizers.catalog import READERS, STAND_INS, build_reader, check_reader_spec
from stisr_lightning.paths import recipes_root
from stisr_lightning.weights import WEIGHTS_DIR_ENV, file_digest, official_files, weights_dir


def _reader(spec: str) -> str:
    try:
        return check_reader_spec(spec)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _column(text: str) -> tuple[str, str]:
    column, _, reader = text.partition("=")
    if not reader:
        raise argparse.ArgumentTypeError(f"{text!r}: expected COLUMN=READER")
    return column.upper(), _reader(reader)


def _calibrate(args: argparse.Namespace) -> None:
    if args.json and Path(args.json).exists():
        raise SystemExit(f"stisr-data calibrate: {args.json} already exists; give a new --json path")
    columns = dict(args.columns) if args.columns else dict(STAND_INS)
    names = list(dict.fromkeys([*columns.values(), *args.recognizers]))
    readers = {name: build_reader(name) for name in names}
    results = [calibrate_subset(path, readers, subset, limit=args.limit)
               for subset, path in subset_paths(args.data_dir).items()]
    subsets = subset_frame(results)
    print(subsets.to_markdown(index=False, floatfmt=".2f"))
    print()
    readings = calibration_frame(results, columns, paper_rows(args.reference or recipes_root() / "sweeps" / "references" / "lemma.csv"))
    print(readings.to_markdown(index=False, floatfmt=".1f"))
    print(f"\nbands: bicubic within {BICUBIC_BAND:g} points of the paper's bicubic row of the reader's column, "
          f"HR at least {MIN_HR_GAIN:g} points above bicubic")
    if args.json:
        record = {"subsets": subsets.to_dict("records"), "readers": readings.to_dict("records")}
        Path(args.json).write_text(json.dumps(record, indent=2))


def _weights_check(folder: Path) -> int:
    """One line per official file the suite knows: present or missing, size, hash, and the tables that need it."""
    print(f"weights directory: {folder}" + ("" if folder.is_dir() else " (does not exist)"))
    missing = 0
    for entry in official_files():
        path = folder / entry.file
        if path.is_file():
            state = f"present  {path.stat().st_size / 2**20:8.1f} MiB  sha256 {file_digest(path)}"
        else:
            state, missing = f"MISSING  {'':>8}      {'':>19}", missing + 1
        print(f"{entry.file:<32} {state}  {entry.what}; needed by: {entry.needed_by}; from: {entry.source}")
    print(f"{len(official_files()) - missing} present, {missing} missing")
    return 1 if missing else 0


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="stisr-data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    synthetic = commands.add_parser("make-synthetic", help="render train/test LMDBs in TextZoom layout")
    synthetic.add_argument("--out", required=True)
    synthetic.add_argument("--train", type=int, required=True)
    synthetic.add_argument("--test", type=int, required=True, help="split evenly over easy/medium/hard")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--workers", type=int, default=2)
    synthetic.add_argument("--str-test", type=int, default=0, help="size of out/str_synth (LEMMA STR degradation)")
    synthetic.add_argument("--hr-size", type=image_size, default=(32, 128), help="HxW, e.g. 32x128")
    synthetic.add_argument("--scale", type=int, default=2)
    inspect = commands.add_parser("inspect", help="counts, sizes, charset, unreadable records, blank and "
                                                  "low-contrast HR images of an LMDB")
    inspect.add_argument("path")
    inspect.add_argument("--json", action="store_true")
    calibrate = commands.add_parser(
        "calibrate", help="per subset: HR and bicubic accuracy of each reader beside the paper's, bicubic PSNR / SSIM")
    calibrate.add_argument("data_dir", help="a folder with test/{easy,medium,hard} (or {easy,medium,hard}) LMDBs")
    calibrate.add_argument("--columns", nargs="+", type=_column, metavar="COLUMN=READER",
                           help="paper column -> reader (default: the embedded default's stand-ins, "
                                + " ".join(f"{c}={r}" for c, r in STAND_INS.items()) + ")")
    calibrate.add_argument("--recognizers", nargs="+", default=[], type=_reader, metavar="READER",
                           help=f"more readers to measure, outside any paper column: {', '.join(READERS)}, or "
                                "NAME@WEIGHTS for other weights of an EasyOCR reader")
    calibrate.add_argument("--limit", type=int, default=None, help="read only the first N images of each subset")
    calibrate.add_argument("--reference", default=None,
                           help="paper numbers (the BICUBIC and HR rows of table T3; default: the recipes root's "
                                "sweeps/references/lemma.csv)")
    calibrate.add_argument("--json", help="also write the numbers to this (new) file")
    weights = commands.add_parser("weights", help="the official files the full presets load")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True)
    check = weights_commands.add_parser(
        "check", help="list each expected official file: present or missing, size, hash, the tables that need it "
                      "(exit code 1 when any is missing)")
    check.add_argument("folder", nargs="?", type=Path, default=None,
                       help=f"the weights directory (default: ${WEIGHTS_DIR_ENV}, else ./weights)")
    benchmark = commands.add_parser("make-str-benchmark", help="select small crops, degrade once, write HR/LR LMDB")
    benchmark.add_argument("--src", required=True)
    benchmark.add_argument("--out", required=True)
    benchmark.add_argument("--seed", type=int, default=0)
    return parser


@one_line_errors("stisr-data")
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "make-synthetic":
        start = time.perf_counter()
        counts = make_synthetic(args.out, train=args.train, test=args.test, seed=args.seed, workers=args.workers,
                                hr_size=args.hr_size, scale=args.scale, str_test=args.str_test)
        elapsed = time.perf_counter() - start
        total = sum(counts.values())
        for name, count in counts.items():
            print(f"{args.out}/{name}: {count} pairs")
        print(f"{total} pairs in {elapsed:.1f} s ({total / max(elapsed, 1e-9):.0f} pairs/s)")
    elif args.command == "inspect":
        report = inspect_lmdb(args.path)
        if args.json:
            print(json.dumps(report, indent=2))
            return
        print(f"{report['path']}: {report['format']} format, {report['num_samples']} samples")
        print("HR sizes (HxW):", ", ".join(f"{k}: {v}" for k, v in list(report["hr_sizes"].items())[:10]))
        if report["lr_sizes"]:
            print("LR sizes (HxW):", ", ".join(f"{k}: {v}" for k, v in list(report["lr_sizes"].items())[:10]))
        print(f"label charset ({len(report['charset'])}): {report['charset']}")
        print(f"unreadable records ({len(report['unreadable'])}):", " ".join(report["unreadable"][:50]))
        print(f"blank HR (grey std < {BLANK_STD:g}/255): {report['blank_hr']}; low-contrast HR (2nd..98th percentile "
              f"grey range < {LOW_CONTRAST_RANGE:g}/255): {report['low_contrast_hr']}")
    elif args.command == "calibrate":
        try:
            _calibrate(args)
        except FileNotFoundError as error:  # a missing test LMDB or reader weights: one line, no traceback
            raise SystemExit(f"stisr-data calibrate: {error}") from None
    elif args.command == "weights":
        raise SystemExit(_weights_check(args.folder or weights_dir()))
    else:
        counts = materialize_str_benchmark(args.src, args.out, seed=args.seed)
        print(", ".join(f"{k}: {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
