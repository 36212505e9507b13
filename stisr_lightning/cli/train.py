"""`stisr-train`: LightningCLI over the suite's systems (LightningModules) and the STISR data module.

Training precision defaults to what the machine computes fast (`stisr_lightning.hardware.auto_precision`: bf16-mixed
on CPUs with AMX / AVX512-BF16 and on GPUs with bf16, fp32 elsewhere); `--trainer.precision 32-true` forces fp32.
Validation and test always compute in fp32 (see `STISRSystem.validation_step`).

Every run lives in `trainer.default_root_dir`: the resolved `config.yaml`, `checkpoints/`, the offline W&B run and
`results.json`. `fit` is followed by `test` on the best checkpoint, so every trained run leaves its results.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Optional

import yaml

from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.cli import LightningCLI

from stisr_lightning.callbacks.progress import ValidationLine
from stisr_lightning.callbacks.results import ResultsWriter
from stisr_lightning.callbacks.samples import RunSamples
from stisr_lightning.cli.parsing import OneLineLightningParser, one_line_errors
from stisr_lightning.data.datamodule import STISRDataModule
from stisr_lightning.hardware import auto_precision
from stisr_lightning.systems.optim import upgrade_optimizer_args
from stisr_lightning.weights import load_weights

WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"


def upgrade_saved_configs(args: list[str]) -> list[str]:
    """`--config` files of runs saved before optimizers were callables (`model.init_args.lr`, ...), passed on as
    today's keys (`systems.optim.upgrade_optimizer_args`), so an old run's config.yaml resumes as it trained."""
    upgraded = list(args)
    for index, arg in enumerate(args):
        if arg == "--config" and index + 1 < len(args):
            position, path = index + 1, args[index + 1]
        elif arg.startswith("--config="):
            position, path = index, arg.split("=", 1)[1]
        else:
            continue
        if not Path(path).is_file():
            continue
        config = yaml.safe_load(Path(path).read_text())
        model = config.get("model") if isinstance(config, dict) else None
        if not isinstance(model, dict) or "class_path" not in model:
            continue
        init_args = model.get("init_args") or {}
        today = upgrade_optimizer_args(model["class_path"], init_args)
        if today is init_args:
            continue
        recipe = [today[key]["class_path"] for key in ("optimizer", "lr_scheduler") if key in today]
        print(f"stisr-train: {path} was saved before optimizers were callables; read as {' + '.join(recipe)}",
              file=sys.stderr)
        text = yaml.safe_dump({**config, "model": {**model, "init_args": today}}, sort_keys=False)
        upgraded[position] = text if position == index + 1 else f"--config={text}"
    return upgraded


class STISRCLI(LightningCLI):
    def __init__(self, args=None, run: bool = True, prog: str = "stisr-train"):
        os.environ.setdefault("WANDB_MODE", "offline")
        super().__init__(
            LightningModule,
            STISRDataModule,
            subclass_mode_model=True,
            save_config_callback=None,
            parser_class=OneLineLightningParser,
            parser_kwargs={"prog": prog},
            seed_everything_default=0,
            trainer_defaults={
                "logger": {"class_path": WANDB_LOGGER, "init_args": {"project": "stisr-lightning", "offline": True}},
                "use_distributed_sampler": False,
                "precision": auto_precision()[0],
                "enable_progress_bar": sys.stderr.isatty(),  # a bar in a log file is a line per refresh
                "callbacks": [
                    ValidationLine(),
                    # last.ckpt is a file (a link would name the best one); after fit it holds the final state
                    ModelCheckpoint(monitor="val/psnr", mode="max", filename="best", save_last=True),
                    ResultsWriter(),
                    RunSamples(),
                ],
            },
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=True, help="Run `test` on the best checkpoint after fit.")
        parser.add_argument(
            "--keep_checkpoints",
            type=bool,
            default=True,
            help="Keep checkpoints/ after fit (and test). Tiny sweep presets turn it off: LEMMA's checkpoints with "
            "optimizer state are ~0.5 GB each and results.json holds everything the tables need.",
        )
        parser.add_argument(
            "--weights",
            type=Optional[str],
            default=None,
            help="Generator weights to load first: an official STISR checkpoint (state_dict_G, state_dict, model) "
            "or a suite checkpoint.",
        )

    def parse_arguments(self, parser, args) -> None:
        if isinstance(args, dict):
            return super().parse_arguments(parser, args)
        self.config = parser.parse_args(upgrade_saved_configs(sys.argv[1:] if args is None else list(args)))

    def before_instantiate_classes(self) -> None:
        """Keep the W&B files inside the run directory unless the config names another `save_dir` (WandbLogger's
        default, ".", counts as none: it would put every run's files in the working directory)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir or os.getcwd()
        logger = config.trainer.logger
        if logger and not isinstance(logger, (bool, list)) and logger.class_path == WANDB_LOGGER:
            if logger.init_args.get("save_dir") in (None, "", "."):
                logger.init_args.save_dir = root
            Path(logger.init_args.save_dir).mkdir(parents=True, exist_ok=True)

    def _prepare_run(self) -> None:
        root = Path(self.trainer.default_root_dir)
        root.mkdir(parents=True, exist_ok=True)
        config = self.config[self.subcommand]
        (root / "config.yaml").write_text(self._parser(self.subcommand).dump(config, skip_none=False))
        if config.weights:
            load_weights(self.model.generator, config.weights)
        resolved = config.clone().as_dict()
        for logger in self.trainer.loggers:
            logger.log_hyperparams(resolved)
        for callback in self.trainer.callbacks:
            if isinstance(callback, ResultsWriter):
                callback.describe_run(self.subcommand, resolved)
            if isinstance(callback, ModelCheckpoint):
                # each system names the validation metric its paper selects models by (higher is better)
                callback.monitor = getattr(self.model, "checkpoint_monitor", callback.monitor)
                callback.dirpath = callback.dirpath or str(root / "checkpoints")

    def before_fit(self) -> None:
        self._prepare_run()
        precision, reason = auto_precision(self.trainer.strategy.root_device.type)
        chosen = self.config[self.subcommand].trainer.precision
        why = f"the default here: {reason}" if str(chosen) == precision else f"set; the default here is {precision}"
        print(f"stisr-train: training precision {chosen} ({why})", flush=True)

    def before_test(self) -> None:
        self._prepare_run()

    def before_validate(self) -> None:
        self._prepare_run()

    def after_test(self) -> None:
        self._finish_wandb()

    def after_validate(self) -> None:
        self._finish_wandb()

    def _finish_wandb(self) -> None:
        """Close the W&B run while the process lives: left to exit, it loses its last records (HandleAbandonedError
        in the run's debug log)."""
        if self.trainer.is_global_zero:
            for logger in self.trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.experiment.finish()

    def after_fit(self) -> None:
        config = self.config[self.subcommand]
        checkpoint = self.trainer.checkpoint_callback
        if config.keep_checkpoints and checkpoint is not None and checkpoint.dirpath:
            # the final state: training may stop between two validations, and last.ckpt is written at validations
            self.trainer.save_checkpoint(Path(checkpoint.dirpath) / "last.ckpt")
        wanted = config.test_after_fit and getattr(self.datamodule, "test_sets", None)
        if wanted and is_overridden("test_step", self.model):
            best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        if not config.keep_checkpoints and self.trainer.is_global_zero:
            shutil.rmtree(Path(self.trainer.default_root_dir) / "checkpoints", ignore_errors=True)
        self._finish_wandb()


@one_line_errors("stisr-train")
def main(args=None) -> None:
    STISRCLI(args=args)


if __name__ == "__main__":
    main()
