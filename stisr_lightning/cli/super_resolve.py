"""`stisr-sr`: super-resolve real image files with a trained (or parameter-free) system.

    stisr-sr runs/tsrn/checkpoints/best.ckpt photos/ crop.png -o out/
    stisr-sr none --config experiments/bicubic.yaml photos/ -o out/

Inputs of any size are resized (bicubic) to the model's LR size; a file that cannot be read is named in a warning
and the rest go on. Outputs keep the input's file stem, as PNG.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import yaml
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from stisr_lightning.data.textzoom import image_to_tensor
from stisr_lightning.weights import load_system, run_config_for

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
log = logging.getLogger("stisr-sr")


def collect_inputs(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(item)
    return files


def model_input_spec(config_path: Path) -> tuple[tuple[int, int], bool]:
    """LR size and whether the model takes the mask channel, from the run's data config."""
    data = yaml.safe_load(config_path.read_text()).get("data") or {}
    if isinstance(data, str):  # an experiment YAML may point its data section at another file
        data = yaml.safe_load((config_path.parent / data).read_text())
    data = data.get("init_args", data)
    return tuple(data.get("lr_size") or (16, 64)), bool(data.get("mask", False))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="stisr-sr", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("checkpoint", help="suite checkpoint or official generator weights; 'none' for bicubic")
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("-o", "--out", required=True, help="output folder")
    parser.add_argument("--config", help="run config (default: the config.yaml of the checkpoint's run)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    checkpoint = None if args.checkpoint.lower() == "none" else args.checkpoint
    config_path = Path(args.config) if args.config else run_config_for(checkpoint)
    system = load_system(checkpoint, config_path).to(args.device)
    lr_size, with_mask = model_input_spec(config_path)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    files = collect_inputs(args.inputs)
    written = 0
    for start in tqdm(range(0, len(files), args.batch_size), desc="super-resolving", unit="batch"):
        names, tensors = [], []
        for path in files[start : start + args.batch_size]:
            try:
                with Image.open(path) as image:
                    resized = image.convert("RGB").resize(lr_size[::-1], Image.BICUBIC)
            except (OSError, UnidentifiedImageError) as error:
                log.warning("skipping %s: %s", path, error)
                continue
            names.append(path.stem)
            tensors.append(image_to_tensor(resized, with_mask))
        if not tensors:
            continue
        with torch.no_grad():
            sr = system.super_resolve(torch.stack(tensors).to(args.device))[:, :3].clamp(0, 1).cpu()
        for name, image in zip(names, sr):
            Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(out_dir / f"{name}.png")
            written += 1
    print(f"wrote {written} of {len(files)} images to {out_dir}")


if __name__ == "__main__":
    main()
