"""`stisr-bench`: throughput numbers, printed as a table with the machine they came from.

    stisr-bench read data/synthetic/train --workers 2
    stisr-bench synth --count 2000 --workers 2
    stisr-bench recognize --recognizers ppocr easyocr tesseract
    stisr-bench train --generators srcnn srresnet tsrn --batch-size 64 [--device cuda --bf16]

Numbers are measured after a warm-up and averaged over the measured part only.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable

import pandas as pd
import torch

MEASURE_SECONDS = 5.0


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.machine()} cpu, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


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


def build_recognizer(name: str):
    if name == "ppocr":
        from stisr_lightning.models.recognizers.ppocr import PPOCRRecognizer
        return PPOCRRecognizer()
    if name == "ppocr-torch":
        from stisr_lightning.models.recognizers.ppocr import PPOCRTorch
        return PPOCRTorch()
    if name == "easyocr":
        from stisr_lightning.models.recognizers.easyocr_crnn import EasyOCRCRNN
        return EasyOCRCRNN()
    if name == "tesseract":
        from stisr_lightning.models.recognizers.tesseract import TesseractRecognizer
        return TesseractRecognizer()
    raise SystemExit(f"stisr-bench: unknown recognizer {name!r}")


def bench_recognize(names: list[str], batch_size: int) -> list[dict]:
    images = torch.rand(batch_size, 3, 32, 128)
    rows = []
    for name in names:
        recognizer = build_recognizer(name).eval()
        rows.append({"what": f"recognize {name} (32x128, batch {batch_size})", "workers": 1,
                     "rate": rate(lambda: len(recognizer.read(images)), warmup=1), "unit": "images/s"})
    return rows


def build_generator(name: str):
    from stisr_lightning.models.generators.srcnn import SRCNN
    from stisr_lightning.models.generators.srresnet import SRResNet
    from stisr_lightning.models.generators.tsrn import TSRN

    generators = {"srcnn": lambda: SRCNN(in_channels=4), "srresnet": lambda: SRResNet(in_channels=4),
                  "tsrn": lambda: TSRN(in_channels=4)}
    if name not in generators:
        raise SystemExit(f"stisr-bench: unknown generator {name!r} (known: {sorted(generators)})")
    return generators[name]()


def bench_train(names: list[str], batch_size: int, device: str, bf16: bool) -> list[dict]:
    from stisr_lightning.losses.mix import LossMix
    from stisr_lightning.losses.pixel import GradientPriorLoss, PixelMSE

    loss = LossMix({"mse": PixelMSE(), "gradient_prior": GradientPriorLoss()}, {"gradient_prior": 1e-4}, scale=100)
    batch = {"lr": torch.rand(batch_size, 4, 16, 64, device=device), "hr": torch.rand(batch_size, 4, 32, 128, device=device)}
    rows = []
    for name in names:
        generator = build_generator(name).to(device).train()
        optimizer = torch.optim.Adam(generator.parameters(), lr=1e-4)

        def step() -> int:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
                total, _ = loss({"sr": generator(batch["lr"])}, batch)
            total.backward()
            torch.nn.utils.clip_grad_norm_(generator.parameters(), 0.25)
            optimizer.step()
            return batch_size

        rows.append({"what": f"train {name} (batch {batch_size}{', bf16' if bf16 else ''})", "workers": 1,
                     "rate": rate(step), "unit": "images/s"})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="stisr-bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
    recognize.add_argument("--recognizers", nargs="+", default=["ppocr", "ppocr-torch", "easyocr", "tesseract"])
    recognize.add_argument("--batch-size", type=int, default=64)
    train = commands.add_parser("train", help="generator training throughput (forward + loss + backward + step)")
    train.add_argument("--generators", nargs="+", default=["srcnn", "srresnet", "tsrn"])
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    train.add_argument("--bf16", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "read":
        rows = [bench_read(args.path, args.workers, args.batch_size, mask=not args.no_mask)]
    elif args.command == "synth":
        rows = [bench_synth(args.count, args.workers)]
    elif args.command == "recognize":
        rows = bench_recognize(args.recognizers, args.batch_size)
    else:
        rows = bench_train(args.generators, args.batch_size, args.device, args.bf16)
    print(f"machine: {machine()}")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".1f"))


if __name__ == "__main__":
    main()
