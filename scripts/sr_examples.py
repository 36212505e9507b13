"""The README's stisr-sr figure: real-looking LR crops of different sizes, bicubic beside a trained model, beside HR.

    .venv/bin/python scripts/sr_examples.py CHECKPOINT [--config RUN_CONFIG] --out docs/stisr_sr_examples.png

Each crop is a synthetic word rendered at an HR size of its own (not TextZoom's 32x128) and degraded by the
embedded default's easy / medium / hard levels in turn, seeded; both columns come from `stisr-sr`'s own code path (`super_resolve_file`).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from stisr_lightning.cli.super_resolve import model_input_spec, super_resolve_file
from stisr_lightning.data.degradations import LEVELS, degrade_level
from stisr_lightning.data.synthetic import discover_fonts, render_legible
from stisr_lightning.systems.loading import load_system, run_config_for

CROPS = [("Lockers", (28, 96)), ("No.57805.00", (32, 180)), ("WHEELCHAIR", (24, 150)), ("Sunless", (40, 110)),
         ("tempestuously:", (30, 260))]
"""(word, HR height x width): the LR crops are half of these."""
ZOOM = 2
LABEL_WIDTH = 110


def make_crops(folder: Path, seed: int = 0) -> list[tuple[Path, np.ndarray]]:
    fonts = discover_fonts()
    crops = []
    for index, (word, size) in enumerate(CROPS):
        hr = render_legible(word, fonts, size, random.Random(f"{seed}/examples/{index}"))
        hr_tensor = torch.from_numpy(hr.copy()).permute(2, 0, 1)[None].float() / 255
        level = LEVELS[("easy", "medium", "hard")[index % 3]]
        lr = degrade_level(hr_tensor, level, seed, torch.tensor([index]))[0]
        path = folder / f"{index}-{word.strip(':.')}.png"
        Image.fromarray(lr.mul(255).round().byte().permute(1, 2, 0).numpy()).save(path)
        crops.append((path, hr))
    return crops


def figure(rows: list[list[Image.Image]], titles: list[str]) -> Image.Image:
    """Rows of [LR, bicubic, model, HR] at the HR size, zoomed ZOOM times (nearest), titled above."""
    cell_w = max(image.width for row in rows for image in row) * ZOOM + 8
    heights = [max(image.height for image in row) * ZOOM + 8 for row in rows]
    canvas = Image.new("RGB", (cell_w * len(titles), 20 + sum(heights)), "white")
    draw = ImageDraw.Draw(canvas)
    for column, title in enumerate(titles):
        draw.text((column * cell_w + 4, 4), title, fill="black")
    top = 20
    for row, height in zip(rows, heights):
        for column, image in enumerate(row):
            canvas.paste(image.resize((image.width * ZOOM, image.height * ZOOM), Image.NEAREST),
                         (column * cell_w + 4, top + 4))
        top += height
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("checkpoint", help="suite checkpoint, or generator weights (shipped:NAME) with --config")
    parser.add_argument("--config", help="run config (default: the config.yaml of the checkpoint's run)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    checkpoint = args.checkpoint
    model_config = Path(args.config) if args.config else run_config_for(checkpoint)
    bicubic_config = Path(__file__).resolve().parents[1] / "experiments" / "bicubic.yaml"
    systems = {"bicubic": (load_system(None, bicubic_config), bicubic_config),
               "model": (load_system(checkpoint, model_config), model_config)}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for path, hr in make_crops(Path(folder)):
            lr = Image.open(path).convert("RGB")
            outputs = []
            for system, config in systems.values():
                lr_size, hr_size, mask = model_input_spec(config)
                outputs.append(super_resolve_file(system, path, lr_size, hr_size, mask, 64, "cpu"))
            rows.append([lr.resize(outputs[0].size, Image.NEAREST), *outputs, Image.fromarray(hr)])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure(rows, ["LR (nearest)", "bicubic", f"stisr-sr {args.checkpoint}", "HR"]).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
