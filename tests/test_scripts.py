"""scripts/main_job.sh wiring, run against fake console scripts that record their arguments."""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("stisr-data", "stisr-eval", "stisr-train", "stisr-compare")


def fake_bin(tmp_path: Path, cuda: bool) -> Path:
    """`python` answers the CUDA probe; every console script appends its argv to calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f"#!/bin/sh\nexit {0 if cuda else 1}\n")
    for name in COMMANDS:
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{tmp_path}/calls.log"\n')
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    return bin_dir


def run_main_job(tmp_path: Path, cuda: bool, **env: str) -> list[str]:
    """The console-script calls of one run (START=scratch unless `env` says otherwise)."""
    env = {"START": "scratch", **env}
    environment = {**os.environ, "BIN": str(fake_bin(tmp_path, cuda)), "OUT": str(tmp_path / "out"), **env}
    for name in ("START", "TRAIN", "TEST", "STEPS", "BATCH", "WORKERS", "DATA"):
        if name not in env:
            environment.pop(name, None)
    subprocess.run(["bash", str(REPO / "scripts" / "main_job.sh")], env=environment, check=True, capture_output=True)
    return (tmp_path / "calls.log").read_text().splitlines()


@pytest.mark.parametrize(
    "cuda, schedule",
    [(False, ("20000", "900", "1000", "32", "1")), (True, ("30000", "1500", "20000", "64", "8"))],
)
def test_main_job_picks_the_cpu_or_gpu_schedule(tmp_path, cuda, schedule):
    train, test, steps, batch, workers = schedule
    data, evaluate, fit, compare = run_main_job(tmp_path, cuda, DATA=str(tmp_path / "data"))
    assert data == f"stisr-data make-synthetic --out {tmp_path}/data --train {train} --test {test} --workers {workers}"
    assert evaluate.startswith("stisr-eval --config experiments/bicubic.yaml")
    assert fit.startswith("stisr-train fit --config experiments/tsrn.yaml")
    for call in (evaluate, fit):
        assert f"--data.batch_size={batch} --data.num_workers={workers}" in call
    assert f"--trainer.max_steps={steps}" in fit
    assert compare == f"stisr-compare {tmp_path}/out/bicubic {tmp_path}/out/tsrn"


def test_main_job_environment_overrides_the_schedule(tmp_path):
    _, _, fit, _ = run_main_job(tmp_path, cuda=True, STEPS="5", BATCH="2", TRAIN="8", TEST="3")
    assert "--trainer.max_steps=5" in fit and "--data.batch_size=2" in fit and "synthetic-8-3/train" in fit


@pytest.mark.parametrize("cuda, steps", [(False, "150"), (True, "2000")])
def test_main_job_tests_then_fine_tunes_the_shipped_tsrn_by_default(tmp_path, cuda, steps):
    _, bicubic, shipped, fit, compare = run_main_job(tmp_path, cuda, START="shipped", DATA=str(tmp_path / "data"))
    assert bicubic.startswith("stisr-eval --config experiments/bicubic.yaml")
    assert shipped.startswith("stisr-eval --config experiments/tsrn.yaml") and "--weights shipped:tsrn_synthetic" in shipped
    assert fit.startswith("stisr-train fit --config experiments/tsrn.yaml")
    assert "--config experiments/addons/tsrn_recognition_loss.yaml" in fit
    assert "--model.init_args.generator_weights=shipped:tsrn_synthetic --model.init_args.optimizer.init_args.lr=1.0e-4" in fit
    assert f"--trainer.max_steps={steps}" in fit
    for call in (shipped, fit):
        assert "--model.init_args.generator.init_args.use_stn=false" in call
    out = tmp_path / "out"
    assert compare == f"stisr-compare {out}/bicubic {out}/tsrn_shipped {out}/tsrn_finetuned"


def test_main_job_rejects_an_unknown_start(tmp_path):
    environment = {**os.environ, "BIN": str(fake_bin(tmp_path, False)), "START": "pretrained"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "main_job.sh")], env=environment, capture_output=True,
                          text=True)
    assert done.returncode == 2 and "START must be shipped or scratch, got 'pretrained'" in done.stderr


def test_main_job_trains_tsrn_without_its_stn_on_aligned_synthetic_pairs(tmp_path):
    _, _, fit, _ = run_main_job(tmp_path, cuda=False, DATA=str(tmp_path / "data"))
    assert "--model.init_args.generator.init_args.use_stn=false" in fit and "--data.val_fraction=0.01" in fit
