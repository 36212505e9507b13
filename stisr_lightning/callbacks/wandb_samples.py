"""What the model did on the test sets: sample PNGs in the run folder, and W&B tables of them and of the results.

Each kept test sample is written as `samples/<test set>/<index>-{lr,sr,hr}.png` inside the run folder, and the W&B
samples table names those files in its `files` column beside the images and every recognizer's reading. W&B's
offline mode stores an image inside a table as the word "Image" (wandb/wandb#4611), so without the files an offline
run would keep no picture of its samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image
from torch import Tensor

from stisr_lightning.callbacks.results import results_tables

IMAGE_KINDS = ("lr", "sr", "hr")


def _png(tensor: Tensor, path: Path) -> Path:
    pixels = (tensor.clamp(0, 1).permute(1, 2, 0).float().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return path


def write_samples(test_samples: dict, run_dir: Path) -> list[tuple[str, str, str, dict[str, Path], dict[str, str]]]:
    """(test set, label, files stem relative to the run, PNG path per image kind, readings) per kept sample."""
    rows = []
    for set_name, kept in test_samples.items():
        folder = run_dir / "samples" / set_name.replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        for index, label in enumerate(kept["label"]):
            stem = folder / f"{index:03d}"
            files = {kind: _png(kept[kind][index], stem.with_name(f"{stem.name}-{kind}.png")) for kind in IMAGE_KINDS}
            rows.append((set_name, label, stem.relative_to(run_dir).as_posix(), files, kept["readings"][index]))
    return rows


class WandbSampleTable(Callback):
    @rank_zero_only
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rows = write_samples(pl_module.test_samples, Path(trainer.default_root_dir))
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not loggers:
            return
        import wandb

        logger = loggers[0]
        recognizers = list(pl_module.recognizers)
        if rows:
            data = [[set_name, label, stem] + [wandb.Image(str(files[kind])) for kind in IMAGE_KINDS]
                    + [readings[r] for r in recognizers] for set_name, label, stem, files, readings in rows]
            logger.log_table("test/samples", columns=["test set", "label", "files", "LR", "SR", "HR"] + recognizers,
                             data=data)
        for title, table in results_tables(pl_module.test_results, pl_module.test_set_names).items():
            if not table.empty:
                logger.log_table(f"test/{title}", dataframe=table.reset_index(names="row"))
