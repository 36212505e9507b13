"""TextDiff's loss terms (Liu et al., Eqs. 1-3, 11, 12, 15).

Output keys the terms read (the TextDiff system must provide them):
- "mask" (N, 1, H, W): B_M's text-mask probabilities, after the sigmoid. Read by DiceLoss.
- "x0_pred" (N, 3, H, W): the network's estimate of the clean residual x0 (for the noise-prediction variant,
  converted with `scheduler.pred_original_sample`). Read by LaplacianEdgeLoss, ResidualDiffusionLoss and
  RecognizerActivationLoss.
- "residual" (N, 3, H, W): the target x0 = x_HR - x_sr. Read by LaplacianEdgeLoss and ResidualDiffusionLoss.
- "noise_pred", "noise": predicted and drawn eps. Read by ResidualDiffusionLoss(predict_noise=True).
- "sr_coarse" (N, 3, H, W): B_T's output x_sr. Read by CoarseGradientProfileLoss and RecognizerActivationLoss.
and the batch key "hr" (its first 3 channels).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from stisr_lightning.data.image_ops import text_mask_from_gray
from stisr_lightning.losses.base import LossTerm
from stisr_lightning.losses.pixel import gradient_field
from stisr_lightning.models.recognizers.crnn import CRNN
from stisr_lightning.weights import frozen_loss_recognizer

LAPLACIAN_KERNEL = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))
CRNN_ACTIVATIONS = tuple(f"relu{i}" for i in range(7))


def _require_same_shape(name: str, prediction: Tensor, target: Tensor) -> None:
    if prediction.shape != target.shape:
        raise ValueError(f"textdiff: {name} shapes differ: {tuple(prediction.shape)} vs {tuple(target.shape)}")


class CoarseGradientProfileLoss(LossTerm):
    """L_GP (Eq. 1): L1 between the gradient fields of B_T's coarse output and HR (RGB), TSRN's gradient field.

    `pixel.GradientPriorLoss` is the same formula on outputs["sr"]; TextDiff applies it to x_sr, not to the final SR.
    """

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        prediction, target = outputs["sr_coarse"][:, :3], batch["hr"][:, :3]
        _require_same_shape("sr_coarse vs hr", prediction, target)
        return F.l1_loss(gradient_field(prediction), gradient_field(target))


class DiceLoss(LossTerm):
    """1 - Dice(P, G) per image, averaged; Dice = (2 sum PG + s) / (sum P^2 + sum G^2 + s) (Eq. 2, with a smoothing
    term s so empty masks give 0 loss); G = `text_mask_from_gray(batch["hr"])`."""

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        prediction = outputs["mask"]
        target = text_mask_from_gray(batch["hr"])
        _require_same_shape("mask vs hr mask", prediction, target)
        overlap = (prediction * target).flatten(1).sum(1)
        energy = prediction.square().flatten(1).sum(1) + target.square().flatten(1).sum(1)
        return (1 - (2 * overlap + self.smooth) / (energy + self.smooth)).mean()


def laplacian(images: Tensor) -> Tensor:
    """4-neighbour Laplacian per channel, replicate-padded so borders carry no artificial edges."""
    channels = images.size(1)
    kernel = images.new_tensor(LAPLACIAN_KERNEL).expand(channels, 1, 3, 3)
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)


class LaplacianEdgeLoss(LossTerm):
    """MSE between the Laplacians of the predicted and the true residual (Eq. 12)."""

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        prediction, target = outputs["x0_pred"], outputs["residual"]
        _require_same_shape("x0_pred vs residual", prediction, target)
        return F.mse_loss(laplacian(prediction), laplacian(target))


class ResidualDiffusionLoss(LossTerm):
    """L_DM (Eq. 11): MSE of the x0 prediction against the residual, or of the eps prediction against the drawn
    noise when `predict_noise` (Table 3 "NP")."""

    def __init__(self, predict_noise: bool = False) -> None:
        super().__init__()
        self.predict_noise = predict_noise

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        keys = ("noise_pred", "noise") if self.predict_noise else ("x0_pred", "residual")
        prediction, target = outputs[keys[0]], outputs[keys[1]]
        _require_same_shape(f"{keys[0]} vs {keys[1]}", prediction, target)
        return F.mse_loss(prediction, target)


class RecognizerActivationLoss(LossTerm):
    """L_joint (Eq. 15): sum over CRNN activation layers of L1(R_i(x_sr + x0_hat), R_i(x_HR)).

    The recognizer is frozen here (eval mode, no weight gradients); gradients reach both x0_hat and x_sr, which is
    how the paper lets this term tune the addition of the two modules. `layers` name ReLUs of `recognizer.cnn`
    (default: all seven); the walk stops after the deepest one. `recognizer_weights`: a CRNN state dict (the
    official `crnn.pth`, or `runs/crnn_synth/crnn.pth` from experiments/recognizers/crnn_synth.yaml); the paper
    uses pretrained CRNN weights, so without them this term compares features of a random network.
    """

    def __init__(
        self, recognizer: CRNN, layers: tuple[str, ...] = CRNN_ACTIVATIONS, recognizer_weights: str | None = None
    ) -> None:
        super().__init__()
        recognizer = frozen_loss_recognizer(
            recognizer, recognizer_weights, "RecognizerActivationLoss",
            "train experiments/recognizers/crnn_synth.yaml (runs/crnn_synth/crnn.pth) or give crnn.pth",
        )
        names = [name for name, _ in recognizer.cnn.named_children()]
        unknown = [layer for layer in layers if layer not in names]
        if not layers or unknown:
            raise ValueError(f"textdiff: RecognizerActivationLoss layers {unknown or layers} not in CRNN.cnn {names}")
        self.recognizer = recognizer
        self.layers = tuple(layers)
        self._depth = max(names.index(layer) for layer in layers) + 1

    def activations(self, images: Tensor) -> list[Tensor]:
        features = []
        x = self.recognizer.preprocess(images)
        for name, module in list(self.recognizer.cnn.named_children())[: self._depth]:
            x = module(x)
            if name in self.layers:
                features.append(x)
        return features

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
        prediction = outputs["sr_coarse"][:, :3] + outputs["x0_pred"][:, :3]
        with torch.no_grad():
            targets = self.activations(batch["hr"][:, :3])
        losses = [F.l1_loss(p, t) for p, t in zip(self.activations(prediction), targets)]
        return torch.stack(losses).sum()
