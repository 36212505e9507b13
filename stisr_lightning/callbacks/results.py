"""results.json (DESIGN.md contract 2): the one file the sweep engine reads from a run, plus the printed tables."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from stisr_lightning.data.datamodule import test_set_path
from stisr_lightning.hardware import describe_cpu
from stisr_lightning.identity import run_identity
from stisr_lightning.metrics.evaluation import TestReport

PACKAGES = ("stisr-lightning", "torch", "torchvision", "lightning", "torchmetrics", "kornia", "onnxruntime", "rapidocr")


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def data_fingerprint(paths: list[str]) -> str:
    """Hash of every LMDB's data file: the same numbers can only be compared on the same bytes."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        data_file = Path(path) / "data.mdb"
        digest.update(path.encode())
        if data_file.is_file():
            with open(data_file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def results_tables(results: dict[str, float], set_names: list[str]) -> dict[str, pd.DataFrame]:
    """Accuracy as recognizer x test set (with averages), image quality as metric x test set."""
    columns = list(set_names) + sorted({k.split("/")[1] + "/average" for k in results if "/average/" in k})
    accuracy: dict[str, dict[str, float]] = {}
    quality: dict[str, dict[str, float]] = {}
    for column in columns:
        prefix = f"test/{column}/"
        for key, value in results.items():
            if not key.startswith(prefix):
                continue
            metric = key[len(prefix):]
            if metric.endswith("/acc"):
                accuracy.setdefault(metric[: -len("/acc")], {})[column] = 100.0 * value
            elif "/" not in metric:
                quality.setdefault(metric, {})[column] = value
    return {
        "accuracy (%)": pd.DataFrame(accuracy).T.reindex(columns=columns),
        "image quality": pd.DataFrame(quality).T.reindex(columns=columns),
    }


class ResultsWriter(Callback):
    """Writes `<default_root_dir>/results.json` after testing and prints the recognizer x subset table.

    The CLI hands over the resolved run config (`config`), so results carry the exact configuration and its hash.
    """

    def __init__(self, filename: str = "results.json", print_tables: bool = True):
        self.filename = filename
        self.print_tables = print_tables
        self.config: dict[str, Any] = {}
        self.config_hash = ""
        self._fit_start: float | None = None
        self._train_images = 0
        self._train_seconds = 0.0
        self._batch_start = 0.0

    def describe_run(self, subcommand: str, config: dict[str, Any]) -> None:
        """The resolved run config, from the CLI; its identity is the one a sweep's store gives the cell."""
        self.config, self.config_hash = config, run_identity(subcommand, config)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._train_seconds += time.perf_counter() - self._batch_start
        self._train_images += batch["lr"].shape[0] * trainer.world_size

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._test_start = time.perf_counter()

    @rank_zero_only
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        test_seconds = time.perf_counter() - self._test_start
        report: TestReport = pl_module.test_report
        sizes = report.set_sizes
        datamodule = trainer.datamodule
        test_sets = getattr(datamodule, "test_sets", {})
        data_paths = list(getattr(datamodule, "train_dirs", [])) + [test_set_path(entry) for entry in test_sets.values()]
        metrics = report.results
        record = {
            # NaN marks a metric that could not be computed here (LPIPS without its backbone): JSON null, listed.
            "metrics": {key: None if math.isnan(value) else value for key, value in metrics.items()},
            "not_available": sorted(key for key, value in metrics.items() if math.isnan(value)),
            "test_set_sizes": sizes,
            "config": self.config,
            "config_hash": self.config_hash,
            "seed": self.config.get("seed_everything"),
            "git_sha": git_sha(),
            "packages": package_versions(),
            "data_fingerprint": data_fingerprint(data_paths),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({describe_cpu()})",
            # training ran at this precision (None: nothing was trained here); validation and test always use fp32
            "precision": {"train": None if self._fit_start is None else str(trainer.precision), "test": "32-true"},
            "world_size": trainer.world_size,
            "wall_time_s": {
                "fit": None if self._fit_start is None else self._test_start - self._fit_start,
                "test": test_seconds,
            },
            "throughput_images_per_s": {
                "train": self._train_images / self._train_seconds if self._train_seconds else None,
                "test": sum(sizes.values()) / test_seconds if test_seconds else None,
            },
            "global_step": trainer.global_step,
            # the weights the metrics come from: a checkpoint file and its step, or null for the weights in memory
            "tested_checkpoint": {"path": trainer.ckpt_path, "step": getattr(pl_module, "loaded_checkpoint_step", None)}
            if trainer.ckpt_path else None,
        }
        out = Path(trainer.default_root_dir) / self.filename
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        if self.print_tables:
            for title, table in results_tables(report.results, report.set_names).items():
                if not table.empty:
                    shown = table.astype(object).where(table.notna(), None)
                    text = shown.to_markdown(floatfmt=".2f" if "accuracy" in title else ".4f", missingval="n/a")
                    print(f"\n{title}\n{text}")
            print(f"\nresults: {out}")
