"""W&B tables of what the model did: LR | SR | HR with every recognizer's reading, and the results table."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from stisr_lightning.callbacks.results import results_tables


def _image(tensor):
    import wandb

    return wandb.Image(tensor.clamp(0, 1).permute(1, 2, 0).numpy())


class WandbSampleTable(Callback):
    @rank_zero_only
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not loggers:
            return
        logger = loggers[0]
        recognizers = list(pl_module.recognizers)
        rows = []
        for set_name, kept in pl_module.test_samples.items():
            for lr, sr, hr, label, readings in zip(kept["lr"], kept["sr"], kept["hr"], kept["label"], kept["readings"]):
                rows.append([set_name, label, _image(lr), _image(sr), _image(hr)] + [readings[r] for r in recognizers])
        if rows:
            logger.log_table("test/samples", columns=["test set", "label", "LR", "SR", "HR"] + recognizers, data=rows)
        for title, table in results_tables(pl_module.test_results, pl_module.test_set_names).items():
            if not table.empty:
                frame = table.reset_index(names="row")
                logger.log_table(f"test/{title}", dataframe=frame)
