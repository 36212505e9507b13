"""Where things a config names are found: the suite's recipes (experiments/ and sweeps/ sit beside the package in a
checkout; a wheel does not carry them, so a run from outside a checkout names one with STISR_ROOT) and the classes of
`class_path` entries."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

ROOT_ENV = "STISR_ROOT"
CHECKOUT = Path(__file__).resolve().parents[1]


def recipes_root() -> Path:
    """$STISR_ROOT, else the working directory when it holds experiments/ and sweeps/, else the checkout this package
    lives in (an editable install); a one-line FileNotFoundError naming STISR_ROOT otherwise."""
    if ROOT_ENV in os.environ:
        root = Path(os.environ[ROOT_ENV]).expanduser()
        if not ((root / "experiments").is_dir() and (root / "sweeps").is_dir()):
            raise FileNotFoundError(f"{ROOT_ENV}={root} holds no experiments/ and sweeps/ folders")
        return root
    for root in (Path.cwd(), CHECKOUT):
        if (root / "experiments").is_dir() and (root / "sweeps").is_dir():
            return root
    raise FileNotFoundError(f"no experiments/ and sweeps/ in {Path.cwd()} or beside the installed package; set "
                            f"{ROOT_ENV} to a stisr-lightning checkout")


def class_of(class_path: str) -> type:
    """The class a config's `class_path` names (`package.module.Class`)."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)
