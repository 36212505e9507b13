import hashlib

import numpy as np
import lmdb
import torch
from PIL import Image

from stisr_lightning.data.str_benchmarks import materialize_str_benchmark
from fakes import write_str_lmdb
from stisr_lightning.data.textzoom import TextZoomLMDB, inspect_lmdb


def _image(height, width, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _benchmark(path):
    sizes = [(16, 64), (20, 60), (32, 40), (3, 30), (10, 20), (16, 64), (8, 4)]  # (h, w); areas 1024, 1200, 1280 ...
    write_str_lmdb(path, [(_image(h, w, i), f"word{i}") for i, (h, w) in enumerate(sizes)])
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.put(b"image-000000006", b"garbage")
    env.close()


def test_selection_counts_and_pairs(tmp_path):
    _benchmark(tmp_path / "src")
    counts = materialize_str_benchmark(tmp_path / "src", tmp_path / "out", seed=0)
    assert counts == {"total": 7, "selected": 3, "skipped_large": 2, "skipped_small": 1, "skipped_unreadable": 1}
    report = inspect_lmdb(tmp_path / "out")
    assert report["num_samples"] == 3 and report["hr_sizes"] == report["lr_sizes"]
    assert report["hr_sizes"] == {"16x64": 1, "10x20": 1, "8x4": 1}
    dataset = TextZoomLMDB(tmp_path / "out")
    assert [dataset[i]["label"] for i in range(3)] == ["word0", "word4", "word6"]
    first = dataset[0]
    assert first["hr"].shape == (3, 32, 128) and first["lr"].shape == (3, 16, 64)
    assert not torch.equal(first["lr"], torch.nn.functional.interpolate(first["hr"][None], size=(16, 64))[0])


def test_fixed_seed_gives_identical_lr(tmp_path):
    _benchmark(tmp_path / "src")
    digests = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        materialize_str_benchmark(tmp_path / "src", tmp_path / name, seed=seed)
        digests.append(hashlib.sha256((tmp_path / name / "data.mdb").read_bytes()).hexdigest())
    assert digests[0] == digests[1] != digests[2]
