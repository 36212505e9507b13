"""Deterministic stand-ins for tests whose expected numbers must be computable by hand."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lmdb
import torch
from torch import Tensor

from stisr_lightning.data.textzoom import encode_image
from stisr_lightning.models.recognizers.base import Recognizer


def write_str_lmdb(path: Path, samples) -> None:
    """An STR-benchmark LMDB (`image-%09d`, `label-%09d`, `num-samples`) of (PIL image, label) pairs, written with
    lmdb directly so that the suite's reader is tested against a file it did not write."""
    env = lmdb.open(str(path), map_size=1 << 30)
    with env.begin(write=True) as txn:
        for number, (image, label) in enumerate(samples, start=1):
            txn.put(b"image-%09d" % number, encode_image(image))
            txn.put(b"label-%09d" % number, label.encode())
        txn.put(b"num-samples", str(number).encode())
    env.close()


class BrightnessRecognizer(Recognizer):
    """Reads "a" from bright images and "b" from dark ones."""

    name = "brightness"
    charset = "ab"

    def read(self, images: Tensor) -> list[str]:
        return ["a" if value > 0.5 else "b" for value in images.mean(dim=(1, 2, 3)).tolist()]


OFFICIAL_CHECKPOINTS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_checkpoints"
if not OFFICIAL_CHECKPOINTS.is_dir():
    OFFICIAL_CHECKPOINTS = Path("/work/shared/reference/official_checkpoints")


def random_official_state(
    manifest: Path | str, seed: int = 0, scale: float = 0.02, prefix: str = ""
) -> dict[str, Tensor]:
    """Random tensors with exactly the keys (after `prefix`), shapes and dtypes of an official checkpoint manifest: a
    path, or a name in OFFICIAL_CHECKPOINTS ("tsrn" for tsrn.json). BatchNorm running variances are positive, so
    forward passes stay finite; integer buffers (BN counters) get small integers."""
    path = Path(manifest) if Path(manifest).suffix == ".json" else OFFICIAL_CHECKPOINTS / f"{manifest}.json"
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in json.loads(path.read_text())["keys"]:
        if dtype == "torch.int64":
            value = torch.randint(0, 100, shape, generator=generator)
        elif key.endswith("running_var"):
            value = torch.rand(shape, generator=generator) + 0.5
        else:
            value = torch.randn(shape, generator=generator) * scale
        state[prefix + key] = value
    return state


REPO = Path(__file__).resolve().parents[1]


def tiny_run_args(root: Path, run_dir: Path, *extra: str) -> list[str]:
    """Data, trainer and output options of a quick run on the `tiny_textzoom` fixture; `extra` options come last and
    win over these."""
    return [
        f"--data.train_dirs=[{root / 'train'}]",
        f'--data.test_sets={{"tiny/easy": {root / "test" / "easy"}, "tiny/medium": {root / "test" / "medium"}}}',
        "--data.num_workers=0",
        "--data.batch_size=4",
        "--data.eval_batch_size=3",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.logger=false",
        *extra,
    ]


def run_command(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m module args` from the repository, as a user runs it (DDP tests need real processes); `env` adds
    variables."""
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(REPO / "tests"), **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
