"""Training the suite's own recognizers on synthetic data (`experiments/recognizers/*_synth.yaml`).

Offline there are no official recognizer weights; this system trains one from the synthetic LMDBs and saves its
weights in the plain state-dict layout of the official release (`<run>/<name>.pth`), so the trained file loads
wherever an official checkpoint would (`recognizer_weights` of STISRSystem).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from stisr_lightning.metrics.recognition import WordAccuracy
from stisr_lightning.models.recognizers.base import TorchRecognizer
from stisr_lightning.systems.optim import configure


class RecognizerSystem(LightningModule):
    def __init__(
        self,
        recognizer: TorchRecognizer,
        use_lr_images: bool = True,
        weights_name: str | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "step",
        save_weights_at: tuple[int, ...] = (),
    ):
        """
        Args:
            recognizer: any recognizer with `training_loss(images, labels) -> Tensor` (its own objective: CTC for
                CRNN, teacher-forced cross-entropy for attention decoders).
            use_lr_images: also train on the (bicubic-upsampled by the recognizer's own preprocessing) LR images,
                so the recognizer reads degraded text as well as clean text.
            weights_name: file name of the saved weights (default `<recognizer.name>.pth`).
            optimizer, lr_scheduler, lr_scheduler_interval: as `STISRSystem`'s (`systems.optim`); transformer
                recognizers train with Adam(betas (0.9, 0.98), eps 1e-9) and `InverseSqrtLR`, stepped per step.
            save_weights_at: optimizer steps after which the weights are also saved, as `<stem>_step<k>.pth`: one
                run yields the checkpoints of several schedule lengths (the calibrated EasyOCR stand-ins).
        """
        super().__init__()
        self.recognizer = recognizer
        self.use_lr_images = use_lr_images
        self.weights_name = weights_name or f"{recognizer.name}.pth"
        self.optimizer, self.lr_scheduler, self.lr_scheduler_interval = optimizer, lr_scheduler, lr_scheduler_interval
        self.save_weights_at = frozenset(save_weights_at)
        self.val_accuracy = WordAccuracy()
        self.checkpoint_monitor = "val/acc"

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images, labels = batch["hr"][:, :3], list(batch["label"])
        if self.use_lr_images:
            lr = F.interpolate(batch["lr"][:, :3], size=images.shape[-2:], mode="bicubic", align_corners=False)
            images, labels = torch.cat([images, lr.clamp(0, 1)]), labels + labels
        loss = self.recognizer.training_loss(images, labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_accuracy.update(self.recognizer.read(batch["hr"][:, :3]), batch["label"])

    def on_validation_epoch_end(self) -> None:
        self.log("val/acc", self.val_accuracy.compute(), prog_bar=True)
        self.val_accuracy.reset()

    def configure_optimizers(self):
        trainable = [p for p in self.recognizer.parameters() if p.requires_grad]
        return configure(self.optimizer, [{"params": trainable}], self.lr_scheduler, self.lr_scheduler_interval)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step in self.save_weights_at:
            name = Path(self.weights_name)
            self._save_weights(f"{name.stem}_step{self.global_step}{name.suffix}")

    def on_train_end(self) -> None:
        self._save_weights(self.weights_name)

    def _save_weights(self, name: str) -> None:
        if self.trainer.is_global_zero:
            path = Path(self.trainer.default_root_dir) / name
            torch.save(self.recognizer.state_dict(), path)
            print(f"recognizer weights: {path}")
