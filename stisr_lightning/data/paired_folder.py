"""Paired LR/HR text-line images kept as a folder, the form real-world data arrives in (Real-CE style x2/x4 pairs,
CTR-TSR-style Chinese text lines).

Layout: `HR/` and `LR/` hold images with the same file names, and one label file sits beside them: `labels.txt`
(`<file name><TAB><label>` per line, or a single space when the line has no tab) or `labels.json` (file name ->
label). Items are TextZoomLMDB's, so the datamodule, systems and metrics cannot tell the two storages apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from stisr_lightning.data.charset import filter_text
from stisr_lightning.data.textzoom import CorruptRecordError, TextPairDataset, TextZoomLMDB, decode_rgb

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
LABEL_FILES = ("labels.txt", "labels.json")


def is_paired_folder(path: str | os.PathLike) -> bool:
    """A folder with `HR/` inside is paired-folder data; anything else is taken for an LMDB."""
    return (Path(path) / "HR").is_dir()


def open_text_dataset(path: str | os.PathLike, **options) -> PairedTextFolder | TextZoomLMDB:
    """The dataset stored at `path`: a PairedTextFolder when it holds `HR/`, a TextZoomLMDB otherwise; `options` are
    the constructor options both share."""
    return PairedTextFolder(path, **options) if is_paired_folder(path) else TextZoomLMDB(path, **options)


def _image_names(folder: Path) -> set[str]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: missing {folder.name}/ folder (paired data needs HR/ and LR/)")
    return {entry.name for entry in folder.iterdir() if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES}


def _read_labels_txt(label_file: Path) -> dict[str, str]:
    labels: dict[str, str] = {}
    for number, line in enumerate(label_file.read_text(encoding="utf-8-sig").split("\n"), start=1):
        line = line.removesuffix("\r")  # not splitlines(): it also breaks at characters a label may hold
        if not line.strip():
            continue
        name, separator, label = line.partition("\t") if "\t" in line else line.partition(" ")
        if not separator or not name:
            raise ValueError(f"{label_file}: line {number} is {line[:60]!r}, expected '<file name><TAB><label>'")
        if name in labels:
            raise ValueError(f"{label_file}: line {number} labels {name} a second time")
        labels[name] = label
    return labels


def _read_labels_json(label_file: Path) -> dict[str, str]:
    try:
        labels = json.loads(label_file.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{label_file}: not valid JSON ({error})") from None
    if not isinstance(labels, dict) or not all(isinstance(label, str) for label in labels.values()):
        raise ValueError(f"{label_file}: expected one JSON object mapping file name -> label string")
    return labels


def read_labels(folder: Path) -> tuple[dict[str, str], Path]:
    """(file name -> raw label, the label file it came from) of a paired folder."""
    present = [folder / name for name in LABEL_FILES if (folder / name).is_file()]
    if not present:
        raise FileNotFoundError(f"{folder}: no label file (expected {' or '.join(LABEL_FILES)})")
    if len(present) > 1:
        raise ValueError(f"{folder}: both {' and '.join(LABEL_FILES)}; keep one")
    label_file = present[0]
    return (_read_labels_txt if label_file.suffix == ".txt" else _read_labels_json)(label_file), label_file


class PairedTextFolder(TextPairDataset):
    """A paired folder as a dataset of `{"hr", "lr", "label", "index"}` dicts, with TextZoomLMDB's options and rules.

    The layout is checked up front (a missing folder, an image without its twin, a label naming a missing image or an
    image without a label is a one-line error naming it), because such a mismatch means the pairs are not the ones the
    user thinks. Image bytes are read only per item: an unreadable image (or a label over `max_label_length`) is
    skipped in favour of the next pair with a warning naming the file, unless `on_corrupt="raise"`. `index` is the
    position in sorted file-name order.
    """

    def __init__(self, path: str | os.PathLike, **options: Any) -> None:
        super().__init__(path, **options)
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: paired folder not found")
        hr_names, lr_names = _image_names(folder / "HR"), _image_names(folder / "LR")
        for name in sorted(hr_names ^ lr_names):
            have, lack = ("HR", "LR") if name in hr_names else ("LR", "HR")
            raise ValueError(f"{folder / have / name}: no {lack} twin {folder / lack / name}")
        if not hr_names:
            raise ValueError(f"{folder}: no images in HR/ (suffixes {', '.join(sorted(IMAGE_SUFFIXES))})")
        raw_labels, label_file = read_labels(folder)
        for name in raw_labels:
            if name not in hr_names:
                raise ValueError(f"{label_file}: labels {name}, which is not an image in {folder / 'HR'}")
        self.names = sorted(hr_names)
        for name in self.names:
            if name not in raw_labels:
                raise ValueError(f"{folder / 'HR' / name}: no label in {label_file}")
        self.labels = [filter_text(raw_labels[name], self.label_filter) for name in self.names]
        self.num_samples = len(self.names)

    def charset(self) -> str:
        """The sorted characters of every filtered label the dataset yields (over-long labels are skipped, so left
        out): a recognizer's charset built from the data, as CTR-TSR does."""
        kept = (label for label in self.labels if self.max_label_length is None or len(label) <= self.max_label_length)
        return "".join(sorted(set().union(*kept)))

    def _read(self, kind: str, name: str) -> np.ndarray:
        key = f"{kind}/{name}"
        try:
            return decode_rgb((Path(self.path) / kind / name).read_bytes())
        except OSError as error:
            raise CorruptRecordError(key, str(error)) from None

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Decoded (hr, lr, filtered label) of `index`; raises CorruptRecordError naming the bad file."""
        name, label = self.names[index], self.labels[index]
        if self.max_label_length is not None and len(label) > self.max_label_length:
            raise CorruptRecordError(f"label of {name}", f"label longer than {self.max_label_length}")
        hr = self._read("HR", name)
        lr = hr if self.lr_from_hr else self._read("LR", name)
        return hr, lr, label


def write_paired_folder(path: str | os.PathLike, pairs: Iterable[tuple[Image.Image, Image.Image, str]]) -> int:
    """Write (HR, LR, label) pairs as `HR/%09d.png`, `LR/%09d.png` (1-based, as the LMDB keys) and a tab-separated
    `labels.txt`; returns the count. Labels holding a tab or a line break cannot be stored in that file."""
    folder = Path(path)
    (folder / "HR").mkdir(parents=True, exist_ok=True)
    (folder / "LR").mkdir(exist_ok=True)
    lines = []
    for number, (hr, lr, label) in enumerate(pairs, start=1):
        if any(ch in label for ch in "\t\r\n"):
            raise ValueError(f"write_paired_folder: label {number} ({label[:40]!r}) holds a tab or line break")
        name = f"{number:09d}.png"
        hr.save(folder / "HR" / name)
        lr.save(folder / "LR" / name)
        lines.append(f"{name}\t{label}\n")
    (folder / "labels.txt").write_text("".join(lines), encoding="utf-8")
    return len(lines)
