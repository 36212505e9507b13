"""Training the VQ-f4 autoencoder that TextResShift diffuses in, on the suite's own data.

Offline there is no `autoencoder_vq_f4.pth`; this system trains a `VQModelTorch` on the HR images of the data module
with LDM's first-stage objective without its GAN (L1 reconstruction + codebook and commitment losses; LPIPS when its
ImageNet backbone is cached). Its checkpoints keep the autoencoder under `autoencoder.`, so a run's `best.ckpt` loads
as `TextResShift(autoencoder_weights=...)` the way the released file does (`load_official_vq_f4`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from stisr_lightning.losses.perceptual import LPIPSLoss
from stisr_lightning.metrics.image import PSNR
from stisr_lightning.models.autoencoders.vq_f4 import VQModelTorch


class AutoencoderSystem(LightningModule):
    def __init__(self, autoencoder: VQModelTorch, optimizer: OptimizerCallable = torch.optim.Adam,
                 codebook_beta: float = 0.25, lpips_weight: float = 0.0):
        """
        Args:
            autoencoder: the VQ model to train (the recipe's is a narrow VQ-f4, see experiments/autoencoders/).
            optimizer: called with the parameters (the recipe: Adam, lr 1e-4, LDM's first-stage betas 0.5, 0.9).
            codebook_beta: weight of the commitment term (LDM / ResShift: 0.25).
            lpips_weight: LPIPS(VGG) on the reconstruction (LDM: 1.0); needs the VGG16 ImageNet file in the torch hub
                cache, so the offline default is 0.
        """
        super().__init__()
        self.autoencoder = autoencoder
        self.optimizer, self.codebook_beta = optimizer, codebook_beta
        self.lpips = LPIPSLoss(net="vgg") if lpips_weight > 0 else None
        self.lpips_weight = lpips_weight
        self.val_psnr = PSNR()
        self.checkpoint_monitor = "val/psnr"

    def reconstruct(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images in [0, 1] -> (reconstruction in about [0, 1], pre-quantization latent)."""
        latent = self.autoencoder.encode(images[:, :3] * 2 - 1)
        return (self.autoencoder.decode(latent) + 1) / 2, latent

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        hr = batch["hr"][:, :3]
        reconstruction, latent = self.reconstruct(hr)
        terms = {"l1": F.l1_loss(reconstruction, hr),
                 "codebook": self.autoencoder.quantize.codebook_loss(latent, self.codebook_beta)}
        if self.lpips is not None:
            terms["lpips"] = self.lpips_weight * self.lpips({"sr": reconstruction}, {"hr": hr})
        loss = sum(terms.values())
        self.log_dict({f"train/loss/{name}": value for name, value in terms.items()}, batch_size=len(hr))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(hr))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_psnr.update(self.reconstruct(batch["hr"][:, :3])[0].float(), batch["hr"][:, :3].float())

    def on_validation_epoch_end(self) -> None:
        self.log("val/psnr", self.val_psnr.compute(), prog_bar=True)
        self.val_psnr.reset()

    def configure_optimizers(self):
        return self.optimizer(self.autoencoder.parameters())
