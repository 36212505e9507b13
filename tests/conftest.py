import os
from pathlib import Path

import pytest
from PIL import Image

from stisr_lightning.data.textzoom import write_textzoom_lmdb

os.environ["WANDB_MODE"] = "disabled"
REPO = Path(__file__).resolve().parents[1]

LR_GRAY, HR_GRAY = 204, 230
"""Uniform images: bicubic keeps a constant image constant, so SR = 204/255 and PSNR = 20 log10(255 / 26)."""


def uniform_pairs(bright_labels: list[str], dark_labels: list[str]):
    pairs = []
    for labels, scale in ((bright_labels, 1.0), (dark_labels, 0.2)):
        for label in labels:
            hr = Image.new("RGB", (128, 32), (round(HR_GRAY * scale),) * 3)
            lr = Image.new("RGB", (64, 16), (round(LR_GRAY * scale),) * 3)
            pairs.append((hr, lr, label))
    return pairs


@pytest.fixture(scope="session")
def tiny_textzoom(tmp_path_factory):
    """train (24 pairs), test/easy (brightness reader: 4 of 6 right), test/medium (3 of 4 right)."""
    root = tmp_path_factory.mktemp("tiny_textzoom")
    write_textzoom_lmdb(root / "train", uniform_pairs(["a"] * 12, ["b"] * 12))
    write_textzoom_lmdb(root / "test" / "easy", uniform_pairs(["a"] * 4 + ["b"] * 2, []))
    write_textzoom_lmdb(root / "test" / "medium", uniform_pairs([], ["b"] * 3 + ["a"]))
    return root


@pytest.fixture(scope="session")
def resolver():
    """stisr-train's parser, built once for every sweep test."""
    from stisr_lightning.sweeps.expand import ConfigResolver

    return ConfigResolver()


@pytest.fixture
def sweep_dir(tmp_path):
    """A throwaway repo layout: sweeps/ beside a link to the real experiments/."""
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "experiments").symlink_to(REPO / "experiments")
    return tmp_path / "sweeps"
