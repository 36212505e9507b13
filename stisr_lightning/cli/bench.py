"""`stisr-bench`: throughput numbers, printed as a table with the machine they came from.

    stisr-bench read data/synthetic/train --workers 2
    stisr-bench synth --count 2000 --workers 2
    stisr-bench recognize --recognizers ppocr easyocr tesseract cdistnet cdistnet-beam10
    stisr-bench train --experiments tsrn lemma --batch-size 64 [--device cuda --precision bf16-mixed --channels-last]
        [--compile generator.forward_with_prior loss.terms.text_focus.recognizer.encoder --compile-mode reduce-overhead]
    stisr-bench sample --experiment textdiff --steps 5 200 --batch-size 16 [--device cuda] [--compile-mode reduce-overhead]

Numbers are measured after a warm-up and averaged over the measured part only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import yaml

from stisr_lightning.cli.parsing import ArgumentParser, image_size, one_line_errors
from stisr_lightning.hardware import auto_precision, describe_cpu
from stisr_lightning.models.recognizers.catalog import READERS, STAND_INS, build_reader
from stisr_lightning.paths import class_of, recipes_root

MEASURE_SECONDS = 5.0
COMPILE_MODES = ["default", "reduce-overhead", "max-autotune"]


def machine() -> str:
    gpu = f"{torch.cuda.get_device_name()}; " if torch.cuda.is_available() else ""
    return f"{gpu}{describe_cpu()}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def rate(step: Callable[[], int], warmup: int = 2, seconds: float = MEASURE_SECONDS, min_steps: int = 3) -> float:
    """Items per second of `step()` (which returns the number of items it processed)."""
    for _ in range(warmup):
        step()
    done, steps, start = 0, 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < seconds:
        done += step()
        steps += 1
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def bench_read(path: str, workers: int, batch_size: int, mask: bool) -> dict:
    from torch.utils.data import DataLoader

    from stisr_lightning.data.textzoom import TextZoomLMDB

    dataset = TextZoomLMDB(path, mask=mask)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=True, persistent_workers=workers > 0)
    batches = iter(())

    def step() -> int:
        nonlocal batches
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        return batch["hr"].shape[0]

    return {"what": f"read TextZoom LMDB (decode+resize{'+mask' if mask else ''})", "workers": workers,
            "rate": rate(step, warmup=workers + 1), "unit": "pairs/s"}


def bench_synth(count: int, workers: int) -> dict:
    from stisr_lightning.data.synthetic import make_synthetic

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        make_synthetic(out, train=count, test=0, seed=0, workers=workers)
        seconds = time.perf_counter() - start
    return {"what": "synthetic pairs (render + degrade + encode + write)", "workers": workers,
            "rate": count / seconds, "unit": "pairs/s"}


def bench_recognize(names: list[str], batch_size: int) -> list[dict]:
    images = torch.rand(batch_size, 3, 32, 128)
    rows = []
    for name in names:
        recognizer = build_reader(name)
        rows.append({"what": f"recognize {name} (32x128, batch {batch_size})", "workers": 1,
                     "rate": rate(lambda: len(recognizer.read(images)), warmup=1), "unit": "images/s"})
    return rows


BENCH_LABELS = ("street", "Cafe", "OPEN24", "exit", "parking", "hotel", "b4", "sale!")


def _experiment_channels(config_path: Path) -> int:
    """Input channels of an experiment: 4 with the mask channel (the TextZoom default), 3 without."""
    data = yaml.safe_load(config_path.read_text()).get("data") or {}
    if isinstance(data, str):
        data = yaml.safe_load((config_path.parent / data).read_text())
    return 4 if data.get("mask", True) else 3


def _timed(step: Callable[[], object], device: str, repeats: int = 3) -> float:
    """Mean seconds of `step()` after one warm-up call (synchronized on GPU)."""
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


COMPILED_WARMUP_STEPS = 5
"""Compilation and CUDA-graph recording happen in the first calls; they are not throughput."""


def _build_trainable(config: Path, device: str, compile_targets: list[str] | None, compile_mode: str):
    """The experiment's system as configured, without evaluation-only recognizers, and its optimizer(s)."""
    from stisr_lightning.systems.loading import build_system

    # Evaluation-only recognizers play no part in a training step (and Tesseract is not on every GPU machine); those
    # that the step reads (the system class's `training_recognizer_args` name them) stay.
    model = yaml.safe_load(config.read_text()).get("model") or {}
    model_args = model.get("init_args") or {}
    kept = [names for arg in getattr(class_of(model["class_path"]), "training_recognizer_args", ())
            for names in ([model_args.get(arg)] if isinstance(model_args.get(arg), str) else model_args.get(arg) or [])]
    init_args = {"recognizers": {kept_name: model_args["recognizers"][kept_name] for kept_name in kept},
                 "val_recognizer": None}
    if compile_targets:
        init_args.update(compile_targets=compile_targets, compile_mode=compile_mode)
    system = build_system(config, init_args).to(device).train()
    system.configure_model()
    if system.loss is None:
        raise SystemExit(f"stisr-bench: {config} has no loss; it cannot be trained")
    configured = system.configure_optimizers()
    configured = configured["optimizer"] if isinstance(configured, dict) else configured
    configured = configured[0] if isinstance(configured, tuple) else configured  # (optimizers, schedulers)
    optimizers = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    return system, optimizers


def bench_train(
    experiments: list[str],
    batch_size: int,
    device: str,
    precision: str = "auto",
    channels_last: bool = False,
    compile_targets: list[str] | None = None,
    compile_mode: str = "default",
) -> list[dict]:
    """Training throughput of each experiment's system as configured (its generator, loss mix and optimizer), side by
    side in one run: PyTorch's defaults (fp32, eager, contiguous) and the configuration asked for (`precision`: auto =
    what `stisr-train` picks on this machine; channels_last; compiled targets), with their ratio. For systems with a
    text prior or a recognizer-driven loss, the step share of those parts in the second configuration.
    `compile_targets` are compiled through the system's own `compile_targets` option; a target that the step never
    calls through (so nothing was compiled) is an error, not a number."""
    import torch._dynamo

    if precision == "auto":
        precision = auto_precision(device)[0]
    rows = []
    for name in experiments:
        config = _experiment_config(name)
        channels = _experiment_channels(config)
        clip = (yaml.safe_load(config.read_text()).get("trainer") or {}).get("gradient_clip_val")
        row = {"experiment": name, "batch": batch_size}
        fast = [precision] + ["channels_last"] * channels_last
        if compile_targets:
            fast.append(f"compiled {'+'.join(compile_targets)} ({compile_mode})")
        for label, bf16, memory_format, targets in (
            ("fp32 eager", False, torch.preserve_format, None),
            (", ".join(fast), precision == "bf16-mixed", torch.channels_last if channels_last else torch.preserve_format,
             compile_targets),
        ):
            torch.manual_seed(0)
            system, optimizers = _build_trainable(config, device, targets, compile_mode)
            system.to(memory_format=memory_format)
            scale = getattr(system.generator, "scale_factor", 2)  # HR 32x128, LR at the generator's scale
            batch = {
                "lr": torch.rand(batch_size, channels, 32 // scale, 128 // scale, device=device).contiguous(
                    memory_format=memory_format),
                "hr": torch.rand(batch_size, channels, 32, 128, device=device).contiguous(memory_format=memory_format),
                "label": [BENCH_LABELS[i % len(BENCH_LABELS)] for i in range(batch_size)],
            }
            autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)

            def step() -> int:
                with autocast:
                    system.manual_update(batch, optimizers, clip)
                return batch_size

            if targets:  # earlier compilations in this process must not count
                torch._dynamo.reset()
                torch._dynamo.utils.counters.clear()
            row[label] = rate(step, warmup=COMPILED_WARMUP_STEPS if targets else 2)
            if targets and not torch._dynamo.utils.counters["stats"]["unique_graphs"]:
                raise SystemExit(f"stisr-bench: {name}: no graph was compiled; the step does not call "
                                 f"{', '.join(targets)} "
                                 "(name the method it calls, e.g. generator.forward_with_prior)")
        row["ratio"] = row[label] / row["fp32 eager"]
        row["share of step"] = _step_shares(system, batch, autocast, device, batch_size / row[label])
        rows.append(row)
    return rows


def _step_shares(system, batch: dict, autocast: torch.autocast, device: str, step_seconds: float) -> str:
    """The share of a training step spent in each part the system names (`step_parts`), each timed alone."""
    shares = []
    for name, part in system.step_parts(batch).items():
        def timed_part(part=part) -> None:
            with autocast:
                part()
        shares.append(f"{name} {100 * _timed(timed_part, device) / step_seconds:.0f}%")
    return ", ".join(shares) or "-"


def _experiment_config(name: str) -> Path:
    config = Path(name) if name.endswith(".yaml") else recipes_root() / "experiments" / f"{name}.yaml"
    if not config.is_file():
        raise SystemExit(f"stisr-bench: no experiment {config}")
    return config


def bench_sample(experiment: str, steps: list[int], batch_size: int, device: str, repeats: int,
                 compile_mode: str | None, lr_size: tuple[int, int] | None = None) -> list[dict]:
    """A diffusion generator's inference (the system's `super_resolve`) per number of sampling steps, as the
    experiment configures it but randomly initialized: the cost does not depend on the weights. The generator must
    have `num_inference_steps` and a `denoiser` (a diffusion model's network), which `compile_mode`
    compiles. `lr_size` defaults to the LR of a 32x128 HR at the generator's scale."""
    from stisr_lightning.systems.loading import build_system

    config = _experiment_config(experiment)
    system = build_system(config, {"recognizers": {}}).to(device).eval()
    generator = system.generator
    if not hasattr(generator, "num_inference_steps") or not hasattr(generator, "denoiser"):
        raise SystemExit(f"stisr-bench sample: {experiment}'s generator ({type(generator).__name__}) has no sampling "
                         "steps (num_inference_steps) or denoiser")
    if compile_mode:
        generator.denoiser.compile(mode=compile_mode)
    scale = generator.scale_factor
    height, width = lr_size or (32 // scale, 128 // scale)
    lr = torch.rand(batch_size, _experiment_channels(config), height, width, device=device)
    parameters = sum(p.numel() for p in generator.parameters()) / 1e6
    rows = []
    with torch.inference_mode():
        generator.num_inference_steps = 1
        for _ in range(COMPILED_WARMUP_STEPS if compile_mode else 1):  # warm-up
            system.super_resolve(lr)
        for count in steps:
            generator.num_inference_steps = count
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                system.super_resolve(lr)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - start) / repeats
            compiled = f", denoiser compiled ({compile_mode})" if compile_mode else ""
            what = (f"{type(generator).__name__}-{count} sampling, random init ({parameters:.1f}M parameters, batch "
                    f"{batch_size}{compiled}, 3x{height}x{width} -> 3x{height * scale}x{width * scale})")
            rows.append({"what": what, "workers": 1, "rate": batch_size / seconds, "unit": "images/s",
                         "s/image": f"{seconds / batch_size:.4g}"})
    return rows


@one_line_errors("stisr-bench")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="stisr-bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    read = commands.add_parser("read", help="TextZoom LMDB reading throughput")
    read.add_argument("path")
    read.add_argument("--workers", type=int, default=2)
    read.add_argument("--batch-size", type=int, default=64)
    read.add_argument("--no-mask", action="store_true")
    synth = commands.add_parser("synth", help="synthetic data generation throughput")
    synth.add_argument("--count", type=int, default=2000)
    synth.add_argument("--workers", type=int, default=2)
    recognize = commands.add_parser("recognize", help="recognizer evaluation throughput")
    recognize.add_argument("--recognizers", nargs="+", default=list(dict.fromkeys(STAND_INS.values())),
                           choices=list(READERS), help="default: the readers of the embedded default's columns")
    recognize.add_argument("--batch-size", type=int, default=64)
    train = commands.add_parser("train", help="training throughput of experiments (forward + loss + backward + step)")
    train.add_argument("--experiments", nargs="+", required=True,
                       help="experiment names (experiments/<name>.yaml) or config paths")
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    train.add_argument("--precision", default="auto", choices=["auto", "32-true", "bf16-mixed"],
                       help="the configuration measured beside fp32 eager (auto: what stisr-train picks here)")
    train.add_argument("--channels-last", action="store_true")
    train.add_argument("--compile", nargs="+", metavar="TARGET", default=None,
                       help="system submodules or methods to torch.compile (generator, generator.forward_with_prior, "
                            "loss.terms.text_focus.recognizer.encoder, ...)")
    train.add_argument("--compile-mode", default="default", choices=COMPILE_MODES)
    sampling = commands.add_parser("sample", help="a diffusion generator's inference speed per number of sampling steps")
    sampling.add_argument("--experiment", required=True, help="experiment name (experiments/<name>.yaml) or config "
                          "path of a diffusion generator")
    sampling.add_argument("--steps", type=int, nargs="+", default=[5, 200])
    sampling.add_argument("--batch-size", type=int, default=16)
    sampling.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    sampling.add_argument("--repeats", type=int, default=1,
                          help="timed calls per step count (after a warm-up: 1 call, 5 when compiled)")
    sampling.add_argument("--compile-mode", default=None, choices=COMPILE_MODES, help="torch.compile the denoiser")
    sampling.add_argument("--lr-size", type=image_size, default=None, help="LR HxW (default: a 32x128 HR's LR)")
    args = parser.parse_args(argv)

    if args.command == "read":
        rows = [bench_read(args.path, args.workers, args.batch_size, mask=not args.no_mask)]
    elif args.command == "synth":
        rows = [bench_synth(args.count, args.workers)]
    elif args.command == "recognize":
        rows = bench_recognize(args.recognizers, args.batch_size)
    elif args.command == "sample":
        rows = bench_sample(args.experiment, args.steps, args.batch_size, args.device, args.repeats, args.compile_mode,
                            args.lr_size)
    else:
        rows = bench_train(args.experiments, args.batch_size, args.device, args.precision, args.channels_last,
                           args.compile, args.compile_mode)
    print(f"machine: {machine()}")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".1f"))


if __name__ == "__main__":
    main()
