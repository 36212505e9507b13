"""STR benchmark LMDBs (IC15, CUTE80, SVT, SVTP) turned into fixed TextZoom-format HR/LR test sets.

LEMMA evaluates on small benchmark crops (h*w <= 1024, both sides >= 4) degraded on the fly without a seed, and
replaces skipped records by their neighbours. Here the selection is materialized once: each kept crop is the HR and
its LEMMA degradation (seeded per record) the LR, both at the crop's own size, so every evaluation sees the same LR.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stisr_lightning.data.degradations import lemma_str_degradation
from stisr_lightning.data.textzoom import _process_env, decode_image, read_num_samples, write_textzoom_lmdb


def lemma_degrade_arrays(images: list[np.ndarray], seed: int, ids: list[int]) -> list[np.ndarray]:
    """LEMMA's degradation of HxWx3 uint8 arrays of mixed sizes, batched per size; sample i is seeded by ids[i]."""
    by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for position, image in enumerate(images):
        by_size[image.shape].append(position)
    degraded: list[np.ndarray] = [np.empty(0)] * len(images)
    for positions in by_size.values():
        batch = torch.from_numpy(np.stack([images[p] for p in positions])).permute(0, 3, 1, 2).float() / 255
        lr = lemma_str_degradation(batch, seed, torch.tensor([ids[p] for p in positions], dtype=torch.int64))
        for position, array in zip(positions, lr.mul(255).round().byte().permute(0, 2, 3, 1).numpy()):
            degraded[position] = array
    return degraded


def read_str_lmdb(path: str | os.PathLike) -> tuple[list[tuple[int, Image.Image | None, str]], int]:
    """All records (1-based number, image or None when unreadable, raw label) and `num-samples`; a TextZoom-format
    LMDB is read through its HR images."""
    records = []
    with _process_env(str(path)).begin(write=False) as txn:
        num_samples = read_num_samples(txn, path)
        for number in range(1, num_samples + 1):
            raw_label = txn.get(b"label-%09d" % number)
            try:
                image = decode_image(txn.get(b"image-%09d" % number) or txn.get(b"image_hr-%09d" % number))
            except OSError:
                image = None
            label = raw_label.decode("utf-8", errors="replace") if raw_label is not None else None
            records.append((number, image if label is not None else None, label or ""))
    return records, num_samples


def materialize_str_benchmark(
    src: str | os.PathLike, out: str | os.PathLike, seed: int = 0, max_area: int = 1024, min_side: int = 4
) -> dict[str, int]:
    """Write the selected, LEMMA-degraded records of an STR LMDB as a TextZoom LMDB; returns selection counts."""
    records, num_samples = read_str_lmdb(src)
    counts = {"total": num_samples, "selected": 0, "skipped_large": 0, "skipped_small": 0, "skipped_unreadable": 0}
    kept = []
    for number, image, label in records:
        if image is None:
            counts["skipped_unreadable"] += 1
        elif image.width * image.height > max_area:
            counts["skipped_large"] += 1
        elif min(image.width, image.height) < min_side:
            counts["skipped_small"] += 1
        else:
            kept.append((number, image, label))
    degraded = lemma_degrade_arrays([np.asarray(image) for _, image, _ in kept], seed, [n for n, _, _ in kept])
    samples = ((image, Image.fromarray(lr), label) for (_, image, label), lr in zip(kept, degraded))
    counts["selected"] = write_textzoom_lmdb(Path(out), samples)
    return counts
