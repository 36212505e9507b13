"""Progress for logs that are files (CI, SLURM, sweep cells): one line per validation instead of a progress bar.

`stisr-train` turns the progress bar off when its output is not a terminal, where a bar writes a line per refresh."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer


class ValidationLine(Callback):
    """Prints the step and every `val/` metric after each validation when no progress bar runs."""

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.progress_bar_callback is not None or not trainer.is_global_zero:
            return
        metrics = sorted((key, float(value)) for key, value in trainer.callback_metrics.items() if key.startswith("val/"))
        print(f"step {trainer.global_step}: " + ", ".join(f"{key} {value:.4g}" for key, value in metrics), flush=True)
