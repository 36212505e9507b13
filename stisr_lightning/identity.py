"""One identity for one experiment: results.json records it and the sweep store keys its cells on it.

The identity hashes what decides a result: the subcommand and the resolved configuration, without where the run's
files live or whether it keeps its checkpoints, without the seed (a cell's second coordinate, recorded beside it), and
with the sweep's output folder written as a placeholder, so that machines sharing one store through different mount
points agree.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

UNHASHED_KEYS = frozenset({"config", "__path__", "seed_everything", "default_root_dir", "dirpath", "save_dir",
                           "keep_checkpoints"})
ROOT_PLACEHOLDER = "$OUT"
SWEEP_ROOT_ENV = "STISR_SWEEP_OUT"
"""Set by the sweep engine for the runs it starts: the output folder that the placeholder stands for."""


def experiment_config(config: Any) -> Any:
    """The configuration without the keys that change no result."""
    if isinstance(config, dict):
        return {key: experiment_config(value) for key, value in config.items() if key not in UNHASHED_KEYS}
    if isinstance(config, (list, tuple)):
        return [experiment_config(value) for value in config]
    return config


def config_identity(subcommand: str, config: dict[str, Any], root: Path | str | None = None) -> str:
    """12 hex digits of the sha256 of the experiment; paths under `root` are hashed relative to it."""
    text = json.dumps({"subcommand": subcommand, "config": experiment_config(config)}, sort_keys=True, default=str)
    if root:
        text = text.replace(str(root), ROOT_PLACEHOLDER)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_identity(subcommand: str, config: dict[str, Any]) -> str:
    """The identity of the run in this process, relative to the sweep that started it (if one did)."""
    return config_identity(subcommand, config, os.environ.get(SWEEP_ROOT_ENV))
