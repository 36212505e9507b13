"""Training the suite's own recognizers on synthetic data (`experiments/recognizers/*_synth.yaml`).

Offline there are no official recognizer weights; this system trains one from the synthetic LMDBs and saves its
weights in the plain state-dict layout of the official release (`<run>/<name>.pth`), so the trained file loads
wherever an official checkpoint would (`recognizer_weights` of STISRSystem).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor

from stisr_lightning.metrics.recognition import WordAccuracy
from stisr_lightning.models.recognizers.base import TorchRecognizer


class RecognizerSystem(LightningModule):
    def __init__(
        self,
        recognizer: TorchRecognizer,
        lr: float = 1e-3,
        use_lr_images: bool = True,
        weights_name: str | None = None,
    ):
        """
        Args:
            recognizer: any recognizer with `training_loss(images, labels) -> Tensor` (its own objective: CTC for
                CRNN, teacher-forced cross-entropy for attention decoders).
            use_lr_images: also train on the (bicubic-upsampled by the recognizer's own preprocessing) LR images,
                so the recognizer reads degraded text as well as clean text.
            weights_name: file name of the saved weights (default `<recognizer.name>.pth`).
        """
        super().__init__()
        self.recognizer = recognizer
        self.lr = lr
        self.use_lr_images = use_lr_images
        self.weights_name = weights_name or f"{recognizer.name}.pth"
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
        return torch.optim.Adam(self.recognizer.parameters(), lr=self.lr)

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            path = Path(self.trainer.default_root_dir) / self.weights_name
            torch.save(self.recognizer.state_dict(), path)
            print(f"recognizer weights: {path}")
