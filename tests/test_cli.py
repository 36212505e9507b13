"""The commands as a user runs them: stisr-train / stisr-eval, including DDP on CPU (subprocesses)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakes import REPO, run_command, tiny_run_args
from PIL import Image

from stisr_lightning.cli.train import STISRCLI
from stisr_lightning.hardware import auto_precision

FAKE_RECOGNIZER = "--model.init_args.recognizers={brightness: {class_path: fakes.BrightnessRecognizer}}"


def tiny_args(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [FAKE_RECOGNIZER, *tiny_run_args(root, run_dir, *extra)]


def test_fit_then_test_writes_run_directory(tiny_textzoom, tmp_path):
    args = ["fit", "--config", "experiments/srcnn.yaml", *tiny_args(tiny_textzoom, tmp_path, "--trainer.max_steps=4",
            "--trainer.val_check_interval=2")]
    STISRCLI(args=args)
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["metrics"]["test/tiny/easy/brightness/acc"] * 6 == pytest.approx(round(record["metrics"]["test/tiny/easy/brightness/acc"] * 6))
    assert {"test/tiny/average/psnr", "test/tiny/medium/ssim", "test/tiny/easy/brightness/ned"} <= set(record["metrics"])
    assert record["test_set_sizes"] == {"tiny/easy": 6, "tiny/medium": 4}
    assert record["global_step"] == 4 and record["seed"] == 0
    assert record["precision"] == {"train": auto_precision("cpu")[0], "test": "32-true"}
    assert record["config"]["model"]["init_args"]["generator"]["class_path"].endswith("SRCNN")
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "checkpoints" / "best.ckpt").is_file()
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)
    assert all(key.startswith("generator.") for key in best["state_dict"])
    assert record["tested_checkpoint"] == {"path": str(tmp_path / "checkpoints" / "best.ckpt"), "step": best["global_step"]}
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert not last.is_symlink() and torch.load(last, weights_only=False)["global_step"] == 4


def test_fit_without_keeping_checkpoints_tests_the_best_one_then_removes_them(tiny_textzoom, tmp_path):
    args = ["fit", "--config", "experiments/srcnn.yaml", *tiny_args(tiny_textzoom, tmp_path, "--trainer.max_steps=2",
            "--trainer.val_check_interval=2", "--keep_checkpoints=false")]
    STISRCLI(args=args)
    assert "test/tiny/average/psnr" in json.loads((tmp_path / "results.json").read_text())["metrics"]
    assert not (tmp_path / "checkpoints").exists()


def test_config_hash_ignores_where_the_run_lives(tiny_textzoom, tmp_path):
    hashes = []
    for run in ("one", "two"):
        STISRCLI(args=["test", "--config", "experiments/bicubic.yaml", *tiny_args(tiny_textzoom, tmp_path / run)])
        hashes.append(json.loads((tmp_path / run / "results.json").read_text())["config_hash"])
    assert hashes[0] == hashes[1]


def test_a_run_logging_to_a_file_prints_one_line_per_validation_and_no_progress_bar(tiny_textzoom, tmp_path):
    result = run_command("stisr_lightning.cli.train", "fit", "--config", "experiments/srcnn.yaml",
                         *tiny_args(tiny_textzoom, tmp_path, "--trainer.max_steps=4", "--trainer.val_check_interval=2",
                                    "--test_after_fit=false"))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in lines] == ["step 2", "step 4"]
    assert "val/psnr" in lines[0] and "val/ssim" in lines[0]
    assert "it/s]" not in result.stdout + result.stderr  # no progress bar refreshes in the log


def test_unknown_config_key_is_a_one_line_error(tmp_path):
    result = run_command("stisr_lightning.cli.train", "fit", "--config", "experiments/srcnn.yaml",
                         "--model.init_args.bogus_switch=1", f"--trainer.default_root_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        """stisr-train fit: error: Parser key "model": Option 'bogus_switch' is not accepted """
        "(stisr-train fit --help for usage)"]


def test_a_class_that_cannot_be_imported_is_named_in_the_one_line_error():
    from stisr_lightning.cli.parsing import summarize_jsonargparse_error

    # jsonargparse's message when a config names a reader whose package is missing (seen on a GPU machine)
    message = """Parser key "model":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'lightning.pytorch.core.module.LightningModule'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'stisr_lightning.systems.base.STISRSystem':
        Parser key "recognizers":
          Does not validate against any of the Union subtypes
          Errors:
            - Problem with given class_path 'stisr_lightning.models.recognizers.ppocr.PPOCRRecognizer':
                No module named 'onnx2torch'
            - Expected a <class 'NoneType'>
          Given value type: <class 'dict'>
    - Expected a <class 'NoneType'>
  Given value type: <class 'dict'>"""
    assert summarize_jsonargparse_error(message) == 'Parser key "model": No module named \'onnx2torch\''


def test_stisr_traceback_shows_the_whole_parser_message(tmp_path):
    result = run_command("stisr_lightning.cli.train", "fit", "--config", "experiments/srcnn.yaml",
                         "--model.init_args.bogus_switch=1", f"--trainer.default_root_dir={tmp_path}",
                         env={"STISR_TRACEBACK": "1"})
    assert result.returncode == 2
    assert "Given value: NestedArg(key='bogus_switch', val='1')" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("stisr-train fit: error: Parser key")


@pytest.mark.parametrize("module, argv, expected", [
    ("stisr_lightning.cli.compare", [], "stisr-compare: error: the following arguments are required: runs "
                                        "(stisr-compare --help for usage)"),
    ("stisr_lightning.cli.data", ["calibrate"], "stisr-data calibrate: error: the following arguments are required: "
                                                "data_dir (stisr-data calibrate --help for usage)"),
    ("stisr_lightning.cli.bench", ["train", "--batch-size", "x"], "stisr-bench train: error: argument --batch-size: "
                                                                  "invalid int value: 'x' (stisr-bench train --help for usage)"),
    ("stisr_lightning.cli.data", ["inspect", "/nonexistent/lmdb"], "stisr-data: error: /nonexistent/lmdb: LMDB not found"),
])
def test_argparse_commands_say_what_is_wrong_in_one_line(module, argv, expected, capsys):
    import importlib

    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [expected]


def test_official_checkpoint_of_another_architecture_names_the_keys(tiny_textzoom, tmp_path):
    torch.save({"state_dict_G": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    result = run_command("stisr_lightning.cli.evaluate", "--config", "experiments/srcnn.yaml",
                         f"--weights={tmp_path / 'other.pth'}", *tiny_args(tiny_textzoom, tmp_path / "run"))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "other.pth" in last and "missing" in last and "conv.weight" in last


def test_offline_wandb_run_lives_in_the_run_folder_with_its_sample_images(tiny_textzoom, tmp_path):
    """Started from another working directory: the W&B run is written under the run folder, closed cleanly, and
    every row of its samples table names PNG files that exist there."""
    run_dir, elsewhere = tmp_path / "run", tmp_path / "cwd"
    elsewhere.mkdir()
    args = tiny_args(tiny_textzoom, run_dir, "--trainer.logger=lightning.pytorch.loggers.WandbLogger")
    result = subprocess.run([sys.executable, "-m", "stisr_lightning.cli.evaluate", "--config",
                             str(REPO / "experiments" / "bicubic.yaml"), *args], cwd=elsewhere, capture_output=True,
                            text=True, timeout=600, env=dict(os.environ, WANDB_MODE="offline",
                                                              PYTHONPATH=str(REPO / "tests")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (elsewhere / "wandb").exists()
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    assert "HandleAbandonedError" not in (wandb_run / "logs" / "debug.log").read_text()
    (table_file,) = (wandb_run / "files" / "media" / "table" / "test").glob("samples_*.table.json")
    table = json.loads(table_file.read_text())
    files = table["columns"].index("files")
    assert [row[0] for row in table["data"]] == ["tiny/easy"] * 6 + ["tiny/medium"] * 4
    for row in table["data"]:
        for kind, size in (("lr", (64, 16)), ("sr", (128, 32)), ("hr", (128, 32))):
            assert Image.open(run_dir / f"{row[files]}-{kind}.png").size == size
    assert Image.open(run_dir / "samples" / "sheet.png").size == (3 * 132 + 4, 10 * (32 + 2 * 12 + 6) + 4)
    (sheet,) = (wandb_run / "files" / "media" / "images" / "test").glob("sample_sheet_*.png")  # the dashboards' panel
    assert Image.open(sheet).size == Image.open(run_dir / "samples" / "sheet.png").size


def test_ddp_evaluation_equals_single_process(tiny_textzoom, tmp_path):
    """Two gloo processes split every test set without padding, so summed metrics equal the single-process ones."""
    records = {}
    for name, extra in (("single", []), ("ddp", ["--trainer.strategy=ddp", "--trainer.devices=2",
                                                   "--trainer.accelerator=cpu"])):
        result = run_command("stisr_lightning.cli.evaluate", "--config", "experiments/bicubic.yaml",
                             *tiny_args(tiny_textzoom, tmp_path / name, *extra))
        assert result.returncode == 0, result.stderr[-3000:]
        records[name] = json.loads((tmp_path / name / "results.json").read_text())
    assert records["ddp"]["world_size"] == 2
    assert records["single"]["precision"] == {"train": None, "test": "32-true"}  # evaluated, never trained
    assert records["ddp"]["test_set_sizes"] == records["single"]["test_set_sizes"]
    assert records["ddp"]["metrics"].keys() == records["single"]["metrics"].keys()
    for key, value in records["single"]["metrics"].items():
        if not key.endswith("/seconds_per_image"):  # a wall-clock time, not a function of the data
            assert records["ddp"]["metrics"][key] == pytest.approx(value, abs=1e-6), key


DDP_TRAINING_PSNR_TOLERANCE_DB = 0.5
"""Single process at batch 8 vs 2 ranks at batch 4: the same effective batch, a different data order."""


def test_ddp_training_matches_single_process_within_tolerance(tiny_textzoom, tmp_path):
    records = {}
    for name, extra in (("single", ["--data.batch_size=8"]),
                        ("ddp", ["--data.batch_size=4", "--trainer.strategy=ddp", "--trainer.devices=2",
                                 "--trainer.accelerator=cpu"])):
        result = run_command("stisr_lightning.cli.train", "fit", "--config", "experiments/srcnn.yaml",
                             *tiny_args(tiny_textzoom, tmp_path / name, "--trainer.max_steps=6",
                                        "--trainer.val_check_interval=3", *extra), extra[0])
        assert result.returncode == 0, result.stderr[-3000:]
        records[name] = json.loads((tmp_path / name / "results.json").read_text())
    single, ddp = records["single"]["metrics"], records["ddp"]["metrics"]
    assert math.isfinite(ddp["test/tiny/average/psnr"])
    assert abs(ddp["test/tiny/average/psnr"] - single["test/tiny/average/psnr"]) < DDP_TRAINING_PSNR_TOLERANCE_DB


def test_eval_refine_with_cascades_a_textdiff_run_and_records_it(tiny_textzoom, tmp_path):
    import yaml

    from stisr_lightning.systems.textdiff import TextDiffSystem
    from stisr_lightning.systems.loading import build_system

    tiny = {"channels": 8, "num_blocks": 1, "tpg_hidden_size": 16, "unet_channels": 8, "channel_multipliers": [1, 2],
            "attention_levels": [], "num_inference_steps": 3}
    model = {"class_path": "stisr_lightning.systems.textdiff.TextDiffSystem",
             "init_args": {"generator": {"class_path": "stisr_lightning.models.generators.textdiff.TextDiff",
                                         "init_args": tiny}}}
    refiner_run = tmp_path / "textdiff"
    (refiner_run / "checkpoints").mkdir(parents=True)
    (refiner_run / "config.yaml").write_text(yaml.safe_dump({"model": model}))
    system = build_system(refiner_run / "config.yaml")
    assert isinstance(system, TextDiffSystem)
    torch.save({"pytorch-lightning_version": "2.0.0", "state_dict": system.state_dict()},
               refiner_run / "checkpoints" / "best.ckpt")

    # The base system's own checkpoint (--ckpt_path) must load into it before its generator is wrapped.
    from stisr_lightning.models.generators.srcnn import SRCNN

    torch.manual_seed(0)
    base_state = {f"generator.{key}": value for key, value in SRCNN(in_channels=4).state_dict().items()}
    base_checkpoint = tmp_path / "srcnn.ckpt"
    torch.save({"pytorch-lightning_version": "2.0.0", "state_dict": base_state}, base_checkpoint)
    base_args = ["--config", "experiments/srcnn.yaml", f"--ckpt_path={base_checkpoint}"]
    STISRCLI(args=["test", *base_args, *tiny_args(tiny_textzoom, tmp_path / "plain")])
    result = run_command("stisr_lightning.cli.evaluate", *base_args, "--refine-with", str(refiner_run),
                         "--refine-steps=2", *tiny_args(tiny_textzoom, tmp_path / "refined"))
    assert result.returncode == 0, result.stderr[-2000:]
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    refined = json.loads((tmp_path / "refined" / "results.json").read_text())
    assert refined["config"]["refine_with"] == str(refiner_run) and refined["config"]["refine_steps"] == 2
    assert refined["config_hash"] != plain["config_hash"]
    assert refined["test_set_sizes"] == plain["test_set_sizes"] == {"tiny/easy": 6, "tiny/medium": 4}
    assert refined["metrics"]["test/tiny/easy/psnr"] != plain["metrics"]["test/tiny/easy/psnr"]


def test_outside_a_checkout_the_recipes_come_from_stisr_root(tmp_path):
    """The package alone (as a wheel installs it: no experiments/ or sweeps/ beside it), run from a folder without
    them: a sweep name is a one-line error naming STISR_ROOT; with STISR_ROOT at a checkout the same command works."""
    import shutil

    site = tmp_path / "site-packages"
    shutil.copytree(REPO / "stisr_lightning", site / "stisr_lightning", ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "stisr_lightning.sweeps.main", "ablations/edsr_cdistnet", "--preset", "tiny",
               "--dry-run", "--out", str(tmp_path / "out")]
    env = dict(os.environ, PYTHONPATH=str(site), WANDB_MODE="disabled")
    env.pop("STISR_ROOT", None)
    alone = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert alone.returncode == 2
    assert "not found in . or sweeps/, and no experiments/ and sweeps/ in" in alone.stderr and "STISR_ROOT" in alone.stderr
    rooted = subprocess.run(command, cwd=tmp_path, env={**env, "STISR_ROOT": str(REPO)}, capture_output=True,
                            text=True, timeout=600)
    assert rooted.returncode == 0, rooted.stderr[-2000:]
    assert "cells" in rooted.stdout
