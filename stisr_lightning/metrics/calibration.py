"""How well a data set lets the readers measure: per subset, HR and bicubic accuracy of every reader, bicubic
PSNR / SSIM, and legibility counts of the HR images, beside the paper's TextZoom numbers for the column a reader
stands in for.

A table is only worth printing when its readers can tell SR from bicubic: a reader must read HR well (room for SR to
win) and read bicubic about as well as the paper's recognizer reads TextZoom's bicubic images (so improvements land
on the paper's scale). `stisr-data calibrate` prints this; `within_bands` applies the suite's acceptance bands.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from stisr_lightning.data.textzoom import TextZoomLMDB, hr_legibility
from stisr_lightning.metrics.image import PSNR, SSIM
from stisr_lightning.metrics.recognition import WordAccuracy
from stisr_lightning.models.generators.bicubic import Bicubic
from stisr_lightning.models.recognizers.base import Recognizer

SUBSETS = ("easy", "medium", "hard")
BICUBIC_BAND = 8.0
"""Points a stand-in's bicubic accuracy may differ from the paper's bicubic row of its column."""
MIN_HR_GAIN = 25.0
"""Points a stand-in must read HR above bicubic, so that SR has room to win."""


@dataclass
class SubsetCalibration:
    subset: str
    count: int
    blank_hr: int
    low_contrast_hr: int
    psnr: float
    ssim: float
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    """reader -> {"hr": %, "bicubic": %}."""


def _batches(dataset: TextZoomLMDB, limit: int | None, batch_size: int):
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for start in range(0, count, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, count))]
        yield (torch.stack([item["hr"][:3] for item in items]), torch.stack([item["lr"][:3] for item in items]),
               [item["label"] for item in items])


def _legibility_counts(hr: Tensor) -> tuple[int, int]:
    flags = [hr_legibility(image) for image in hr.mul(255).round().byte().permute(0, 2, 3, 1).numpy()]
    return sum(blank for blank, _ in flags), sum(low for _, low in flags)


@torch.no_grad()
def calibrate_subset(path: str | os.PathLike, readers: dict[str, Recognizer], subset: str, limit: int | None = None,
                     batch_size: int = 64) -> SubsetCalibration:
    """Bicubic is the Bicubic generator at the LMDB's HR / LR size ratio, as the tables' Bicubic row computes it."""
    dataset = TextZoomLMDB(path)
    bicubic = Bicubic(dataset.hr_size[0] // dataset.lr_size[0])
    psnr, ssim = PSNR(), SSIM()
    accuracy = {name: {"hr": WordAccuracy(), "bicubic": WordAccuracy()} for name in readers}
    count = blank = low_contrast = 0
    for hr, lr, labels in _batches(dataset, limit, batch_size):
        upscaled = bicubic(lr)
        psnr.update(upscaled, hr)
        ssim.update(upscaled, hr)
        flags = _legibility_counts(hr)
        count, blank, low_contrast = count + len(labels), blank + flags[0], low_contrast + flags[1]
        for name, reader in readers.items():
            accuracy[name]["hr"].update(reader.read(hr), labels)
            accuracy[name]["bicubic"].update(reader.read(upscaled), labels)
    return SubsetCalibration(
        subset, count, blank, low_contrast, float(psnr.compute()), float(ssim.compute()),
        {name: {kind: 100 * float(metric.compute()) for kind, metric in kinds.items()}
         for name, kinds in accuracy.items()},
    )


def paper_rows(reference_csv: str | os.PathLike, table: str = "T3") -> dict[tuple[str, str, str], float]:
    """(column, subset, "hr" | "bicubic") -> the paper's number, from a references CSV's BICUBIC and HR rows."""
    frame = pd.read_csv(reference_csv, dtype=str, keep_default_na=False)
    frame = frame[(frame["table"] == table) & frame["row"].str.upper().isin(["BICUBIC", "HR"]) & (frame["value"] != "")]
    rows = {}
    for record in frame.itertuples():
        column, _, subset = record.column.partition("/")
        kind = "hr" if record.row.upper() == "HR" else "bicubic"
        rows[(column.upper(), subset.lower(), kind)] = float(record.value)
    return rows


def sampling_margin(percent: float, count: int) -> float:
    """Half-width (points) of the normal-approximation 95% interval of an accuracy measured on `count` images: with
    50 images per subset a reader's bicubic accuracy moves by up to ~14 points from one draw of data to the next."""
    share = percent / 100
    return 196 * math.sqrt(share * (1 - share) / count) if count else float("nan")


def calibration_frame(results: list[SubsetCalibration], columns: dict[str, str],
                      paper: dict[tuple[str, str, str], float]) -> pd.DataFrame:
    """One row per (reader, subset): HR and bicubic accuracy, the paper's numbers for the reader's column, and
    whether the reader is inside the bands (bicubic within BICUBIC_BAND of the paper's, HR >= bicubic + MIN_HR_GAIN),
    with the sampling margin of the bicubic accuracy: judge bands on a few hundred images per subset, not on 50."""
    column_of = {reader: column for column, reader in columns.items()}
    records = []
    readers = list(results[0].accuracy) if results else []
    for reader in readers:
        column = column_of.get(reader, "")
        for result in results:
            hr, bicubic = result.accuracy[reader]["hr"], result.accuracy[reader]["bicubic"]
            paper_bicubic = paper.get((column, result.subset, "bicubic"))
            record = {"column": column or "-", "reader": reader, "subset": result.subset, "HR": hr,
                      "bicubic": bicubic, "bicubic ±95%": sampling_margin(bicubic, result.count),
                      "paper HR": paper.get((column, result.subset, "hr")),
                      "paper bicubic": paper_bicubic, "in bands": "-"}
            if paper_bicubic is not None:
                inside = abs(bicubic - paper_bicubic) <= BICUBIC_BAND and hr - bicubic >= MIN_HR_GAIN
                record["in bands"] = "yes" if inside else "no"
            records.append(record)
    return pd.DataFrame(records)


def subset_frame(results: list[SubsetCalibration]) -> pd.DataFrame:
    return pd.DataFrame([{"subset": r.subset, "images": r.count, "blank HR": r.blank_hr,
                          "low-contrast HR": r.low_contrast_hr, "bicubic PSNR": r.psnr, "bicubic SSIM": r.ssim}
                         for r in results])


def subset_paths(data_dir: str | os.PathLike) -> dict[str, Path]:
    """The TextZoom test layout: DATA_DIR/test/{easy,medium,hard} (or DATA_DIR/{easy,medium,hard})."""
    root = Path(data_dir)
    base = root / "test" if (root / "test").is_dir() else root
    paths = {subset: base / subset for subset in SUBSETS}
    missing = [str(path) for path in paths.values() if not (path / "data.mdb").is_file()]
    if missing:
        raise FileNotFoundError(f"{data_dir}: no TextZoom test LMDB at {', '.join(missing)}")
    return paths
