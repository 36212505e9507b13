"""What the model did on the test sets: sample PNGs and a sample sheet in the run folder, and W&B tables of them and
of the results.

Each kept test sample is written as `samples/<test set>/<index>-{lr,sr,hr}.png` inside the run folder, and
`samples/sheet.png` shows them as rows of LR | SR | HR with the label and every recognizer's reading below (green
when it counts as right under the TextZoom protocol, red when not). The W&B samples table names the files in its
`files` column beside the images and every recognizer's reading. W&B's
offline mode stores an image inside a table as the word "Image" (wandb/wandb#4611), so without the files an offline
run would keep no picture of its samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw
from torch import Tensor

from stisr_lightning.callbacks.results import results_tables
from stisr_lightning.data.charset import filter_text
from stisr_lightning.metrics.evaluation import KeptSamples, TestReport

IMAGE_KINDS = ("lr", "sr", "hr")
SHEET_KEY = "test/sample_sheet"
"""W&B key of the sample sheet image (a media panel can show images, not images inside tables)."""
SampleRow = tuple[str, str, str, dict[str, Path], dict[str, str]]
"""(test set, label, files stem relative to the run, PNG path per image kind, reading per recognizer)"""


def _png(tensor: Tensor, path: Path) -> Path:
    pixels = (tensor.clamp(0, 1).permute(1, 2, 0).float().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return path


def write_samples(samples: dict[str, KeptSamples], run_dir: Path) -> list[SampleRow]:
    """Every kept test sample as PNG files under `samples/`, one row each."""
    rows = []
    for set_name, kept in samples.items():
        folder = run_dir / "samples" / set_name.replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        for index, label in enumerate(kept.label):
            stem = folder / f"{index:03d}"
            files = {kind: _png(getattr(kept, kind)[index], stem.with_name(f"{stem.name}-{kind}.png"))
                     for kind in IMAGE_KINDS}
            rows.append((set_name, label, stem.relative_to(run_dir).as_posix(), files, kept.readings[index]))
    return rows


RIGHT, WRONG, INK = (0, 128, 0), (200, 0, 0), (0, 0, 0)
LINE_HEIGHT = 12


def sample_sheet(rows: list[SampleRow], recognizers: list[str], text_filter: str = "lower") -> Image.Image:
    """Rows of LR (nearest, at the HR size) | SR | HR, each with its test set and label, then one line per reader:
    its reading, green when it matches the label under the data's protocol (`filter_text(., text_filter)`, TextZoom's
    by default), red otherwise."""
    images = [[Image.open(files[kind]).convert("RGB") for kind in IMAGE_KINDS] for *_, files, _ in rows]
    width, height = images[0][2].size
    row_height = height + LINE_HEIGHT * (1 + len(recognizers)) + 6
    sheet = Image.new("RGB", (3 * (width + 4) + 4, row_height * len(rows) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for index, ((set_name, label, _, _, readings), row_images) in enumerate(zip(rows, images)):
        top = 4 + index * row_height
        for column, image in enumerate(row_images):
            sheet.paste(image.resize((width, height), Image.NEAREST), (4 + column * (width + 4), top))
        draw.text((4, top + height + 2), f"{set_name}: {label}", fill=INK)
        for line, name in enumerate(recognizers, start=1):
            right = filter_text(readings[name], text_filter) == filter_text(label, text_filter)
            draw.text((4, top + height + 2 + line * LINE_HEIGHT), f"{name}: {readings[name]}",
                      fill=RIGHT if right else WRONG)
    return sheet


class RunSamples(Callback):
    @rank_zero_only
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        report: TestReport = pl_module.test_report
        run_dir = Path(trainer.default_root_dir)
        rows = write_samples(report.samples, run_dir)
        recognizers = report.recognizers
        if rows:
            sample_sheet(rows, recognizers, report.text_filter).save(run_dir / "samples" / "sheet.png")
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not loggers:
            return
        import wandb

        logger = loggers[0]
        if rows:
            logger.log_image(SHEET_KEY, [str(run_dir / "samples" / "sheet.png")])  # the dashboards' sample panels
            data = [[set_name, label, stem] + [wandb.Image(str(files[kind])) for kind in IMAGE_KINDS]
                    + [readings[r] for r in recognizers] for set_name, label, stem, files, readings in rows]
            logger.log_table("test/samples", columns=["test set", "label", "files", "LR", "SR", "HR"] + recognizers,
                             data=data)
        for title, table in results_tables(report.results, report.set_names).items():
            if not table.empty:
                logger.log_table(f"test/{title}", dataframe=table.reset_index(names="row"))
