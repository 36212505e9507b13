"""A trained system back from its run: the config beside a checkpoint, the system it describes, its weights."""

from __future__ import annotations

from pathlib import Path

import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningModule

from stisr_lightning.systems.base import STISRSystem
from stisr_lightning.systems.optim import upgrade_optimizer_args
from stisr_lightning.weights import load_state_dict_strict, load_weights, read_checkpoint


def run_config_for(checkpoint_path: str | Path) -> Path:
    """A suite checkpoint lives in `<run>/checkpoints/`; the run's resolved config is `<run>/config.yaml`."""
    checkpoint_path = Path(checkpoint_path)
    for parent in checkpoint_path.parents:
        candidate = parent / "config.yaml"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{checkpoint_path}: no config.yaml in any parent directory; pass --config")


def build_system(config_path: str | Path, init_args: dict | None = None,
                 base: type[LightningModule] = STISRSystem) -> LightningModule:
    """Instantiate the run's system (`model:` section of its config, `init_args` replacing some of its arguments)
    without data, trainer or logger. Configs of runs saved before optimizers were callables are upgraded
    (`systems.optim.upgrade_optimizer_args`). `base`: the class the system must derive from."""
    config = yaml.safe_load(Path(config_path).read_text())
    if "model" not in config:
        raise ValueError(f"{config_path}: no 'model' section")
    model = config["model"]
    model["init_args"] = {**upgrade_optimizer_args(model["class_path"], model.get("init_args") or {}),
                          **(init_args or {})}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(base, "model")
    return parser.instantiate_classes(parser.parse_object({"model": model})).model


def load_system(checkpoint_path: str | Path | None, config_path: str | Path | None = None,
                base: type[LightningModule] = STISRSystem) -> LightningModule:
    """A system ready for inference: from a suite checkpoint (config found beside it) or a config alone (bicubic)."""
    if checkpoint_path is None and config_path is None:
        raise ValueError("load_system needs a checkpoint, a config, or both")
    system = build_system(config_path or run_config_for(checkpoint_path), base=base)
    if checkpoint_path is not None:
        checkpoint = read_checkpoint(checkpoint_path)
        if isinstance(checkpoint, dict) and "pytorch-lightning_version" in checkpoint:
            system.on_load_checkpoint(checkpoint)
            load_state_dict_strict(system, checkpoint["state_dict"], str(checkpoint_path))
        else:  # an official file or generator weights, with the same handling as `--weights`
            load_weights(system.generator, checkpoint_path)
    return system.eval()
