"""`stisr-sr`: super-resolve real image files with a trained (or parameter-free) system.

    stisr-sr runs/tsrn/checkpoints/best.ckpt photos/ crop.png -o out/
    stisr-sr none --config experiments/bicubic.yaml photos/ -o out/

Geometry: nothing is squashed, and every output is the model's scale times its input's size. A text crop up to the
model's HR height (a real LR crop) is brought to the model's LR height with its aspect ratio kept and super-resolved
through overlapping windows of the model's LR width (a 20x100 crop through a x2 TextZoom model gives 40x200). A
taller image would lose detail that way, so it is super-resolved at its own resolution, in overlapping LR-size tiles.
Transparency is composited on white or black, whichever keeps the text visible; gray stays gray.

Outputs: PNG, at the input's path relative to the folder given (files given one by one: their name), with the
suffix replaced by .png; when two inputs would share a name (x.png, x.jpg) the non-PNG keeps its suffix (x.jpg.png).
An existing output is never replaced without --overwrite.
Exit code: 0 when every input was written, 1 when any failed (one line each, then a summary), 2 when nothing could
start (bad arguments, missing checkpoint or config).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from stisr_lightning.cli.parsing import ArgumentParser
from stisr_lightning.data.tiling import fit_to_height, open_crop, super_resolve_tiled
from stisr_lightning.data.textzoom import image_to_tensor
from stisr_lightning.systems.loading import load_system, run_config_for
from stisr_lightning.weights import resolve_weights

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def plan_outputs(inputs: list[str], out_dir: Path, overwrite: bool) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(input file, output file) pairs, and one line per input that cannot be written."""
    relative: list[tuple[Path, Path]] = []
    failures: list[str] = []
    for item in map(Path, inputs):
        if item.is_dir():
            relative += [(p, p.relative_to(item)) for p in sorted(item.rglob("*"))
                         if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        elif item.is_file():
            relative.append((item, Path(item.name)))
        else:
            failures.append(f"{item}: no such file or folder")
    by_output: dict[Path, list[tuple[Path, Path]]] = defaultdict(list)
    for source, rel in relative:
        by_output[rel.with_suffix(".png")].append((source, rel))
    planned: dict[Path, Path] = {}
    for output, group in by_output.items():
        for source, rel in group:
            name = output if len(group) == 1 or rel.suffix.lower() == ".png" else rel.with_name(rel.name + ".png")
            if name in planned:
                failures.append(f"{source}: its output {out_dir / name} would overwrite that of {planned[name]}")
            elif (out_dir / name).exists() and not overwrite:
                failures.append(f"{source}: {out_dir / name} exists (--overwrite replaces it)")
            else:
                planned[name] = source
    return [(source, out_dir / name) for name, source in planned.items()], failures


def model_input_spec(config_path: Path) -> tuple[tuple[int, int], tuple[int, int], bool]:
    """LR size, HR size and whether the model takes the mask channel, from the run's data config."""
    data = yaml.safe_load(config_path.read_text()).get("data") or {}
    if isinstance(data, str):  # an experiment YAML may point its data section at another file
        data = yaml.safe_load((config_path.parent / data).read_text())
    data = data.get("init_args", data)
    return tuple(data.get("lr_size") or (16, 64)), tuple(data.get("hr_size") or (32, 128)), bool(data.get("mask", False))


def super_resolve_file(system, path: Path, lr_size: tuple[int, int], hr_size: tuple[int, int], with_mask: bool,
                       batch_size: int, device: str) -> Image.Image:
    image, gray = open_crop(path)
    lr = fit_to_height(image, lr_size[0]) if image.height <= hr_size[0] else image

    def model(windows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return system.super_resolve(windows.to(device))[:, :3].clamp(0, 1)

    sr = super_resolve_tiled(model, image_to_tensor(lr, with_mask), lr_size, batch_size)
    result = Image.fromarray((sr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB")
    scale = sr.shape[-2] // lr.height
    size = (image.width * scale, image.height * scale)
    if result.size != size:
        result = result.resize(size, Image.BICUBIC)
    return result.convert("L") if gray else result


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="stisr-sr", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("checkpoint", help="suite checkpoint or official generator weights (a path, or official:<file> "
                                           "in the weights directory); 'none' for bicubic")
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("-o", "--out", required=True, help="output folder")
    parser.add_argument("--config", help="run config (default: the config.yaml of the checkpoint's run)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per model call")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    checkpoint = None if args.checkpoint.lower() == "none" else args.checkpoint
    if checkpoint is not None:
        try:
            if not resolve_weights(checkpoint).is_file():
                raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
        except FileNotFoundError as error:
            parser.exit(2, f"stisr-sr: error: {error}\n")
    if checkpoint is None and not args.config:
        parser.exit(2, "stisr-sr: error: 'none' (bicubic) needs --config, e.g. experiments/bicubic.yaml\n")
    try:
        config_path = Path(args.config) if args.config else run_config_for(checkpoint)
        system = load_system(checkpoint, config_path).to(args.device)
        lr_size, hr_size, with_mask = model_input_spec(config_path)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        parser.exit(2, f"stisr-sr: error: {' '.join(str(error).split())}\n")

    out_dir = Path(args.out)
    jobs, failures = plan_outputs(args.inputs, out_dir, args.overwrite)
    for line in failures:
        print(f"stisr-sr: {line}", file=sys.stderr)
    written = 0
    for source, target in jobs:
        try:
            result = super_resolve_file(system, source, lr_size, hr_size, with_mask, args.batch_size, args.device)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            failures.append(str(source))
            print(f"stisr-sr: {source}: cannot read it as an image ({' '.join(str(error).split())})", file=sys.stderr)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        result.save(target)
        written += 1
    total = written + len(failures)
    print(f"stisr-sr: wrote {written} of {total} images to {out_dir}" + (f"; {len(failures)} failed" if failures else ""))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
