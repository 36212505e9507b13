"""`stisr-data`: make synthetic TextZoom-format data, materialize STR benchmarks, inspect LMDBs."""

from __future__ import annotations

import argparse
import json
import time

from stisr_lightning.data.str_benchmarks import materialize_str_benchmark
from stisr_lightning.data.synthetic import make_synthetic
from stisr_lightning.data.textzoom import BLANK_STD, LOW_CONTRAST_RANGE, inspect_lmdb


def _size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stisr-data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    synthetic = commands.add_parser("make-synthetic", help="render train/test LMDBs in TextZoom layout")
    synthetic.add_argument("--out", required=True)
    synthetic.add_argument("--train", type=int, required=True)
    synthetic.add_argument("--test", type=int, required=True, help="split evenly over easy/medium/hard")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--workers", type=int, default=2)
    synthetic.add_argument("--str-test", type=int, default=0, help="size of out/str_synth (LEMMA STR degradation)")
    synthetic.add_argument("--hr-size", type=_size, default=(32, 128), help="HxW, e.g. 32x128")
    synthetic.add_argument("--scale", type=int, default=2)
    inspect = commands.add_parser("inspect", help="counts, sizes, charset, unreadable records, blank and "
                                                  "low-contrast HR images of an LMDB")
    inspect.add_argument("path")
    inspect.add_argument("--json", action="store_true")
    benchmark = commands.add_parser("make-str-benchmark", help="select small crops, degrade once, write HR/LR LMDB")
    benchmark.add_argument("--src", required=True)
    benchmark.add_argument("--out", required=True)
    benchmark.add_argument("--seed", type=int, default=0)
    return parser


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
    else:
        counts = materialize_str_benchmark(args.src, args.out, seed=args.seed)
        print(", ".join(f"{k}: {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
