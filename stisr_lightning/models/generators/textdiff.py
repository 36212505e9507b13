"""TextDiff (Liu et al., "TextDiff: Mask-Guided Residual Diffusion Models for Scene Text Image Super-Resolution"):
a Text Enhancement Module (TEM) gives a coarse SR image x_sr and a text mask x_m; the Mask-guided Residual Diffusion
module (MRD) samples the residual x_HR - x_sr conditioned on both, and SR = x_sr + residual.

No official code is public; the TEM layout is read off the paper's Fig. 3 (see
shared/reference/diffusion_textsr_edsr_quant.md, section 1.2) and these choices are ours:
- "Sample Inception" stem: parallel 5/7/9/11 convs of `channels // 4` each, concatenated, 7x7 conv, PReLU, 7x7 conv;
- B_T follows TATT around the DSRBs: the student TP generator reads the LR image, its TP is detached (only L_TP
  trains it, as in TATT) and the TP Interpreter turns it into a map fed to every DSRB; then conv3x3-BN, a skip from
  the stem, PixelShuffle upsampling and a 9x9 conv to RGB, with no output activation (the residual is added to it);
- B_M reads concat(LR RGB, stem features), as the figure draws it.
Only the RGB channels of the input are used. The output has the input's channels, since the test loop compares SR
and HR of one shape (and scores RGB only): RGB, plus for RGB + mask input (the TextZoom loaders' 4th channel) a
4th channel holding B_M's mask, which follows the same gray-threshold convention (or, without B_M, that threshold
applied to the SR image).

Table 3 switches: `mask_branch=False` ("w/o B_M"), `refiner="unet"` ("NU": the same U-Net as a one-step residual
regressor), `prediction="noise"` ("NP": eps-prediction with stochastic sampling, eta = 1 unless `eta` is given).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from stisr_lightning.data.image_ops import text_mask_from_gray
from stisr_lightning.diffusion.gaussian import ResidualDiffusionScheduler, sample
from stisr_lightning.models.blocks.dsrb import DoubleSequentialResidualBlock
from stisr_lightning.models.blocks.mask_predictor import MaskPredictor
from stisr_lightning.models.blocks.srb import UpsampleBlock
from stisr_lightning.models.blocks.text_prior import TPGenerator, TPInterpreter
from stisr_lightning.models.generators.mrd import MRDUNet


def match_input_channels(sr: Tensor, lr: Tensor, mask: Tensor | None) -> Tensor:
    """RGB SR for RGB input; RGB SR + a text mask (B_M's, else the gray threshold of SR) for RGB + mask input."""
    if lr.shape[1] == 3:
        return sr
    return torch.cat([sr, text_mask_from_gray(sr) if mask is None else mask], dim=1)


class SampleInception(nn.Module):
    """Multi-kernel stem: one conv per kernel size in parallel, concatenated, then 7x7 conv - PReLU - 7x7 conv."""

    def __init__(self, in_channels: int = 3, channels: int = 64, kernel_sizes: tuple[int, ...] = (5, 7, 9, 11)):
        super().__init__()
        if channels % len(kernel_sizes):
            raise ValueError(f"textdiff: channels {channels} not divisible by {len(kernel_sizes)} inception branches")
        width = channels // len(kernel_sizes)
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, width, k, padding=k // 2) for k in kernel_sizes)
        self.fuse = nn.Sequential(
            nn.Conv2d(width * len(kernel_sizes), channels, 7, padding=3),
            nn.PReLU(),
            nn.Conv2d(channels, channels, 7, padding=3),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))


class TextEnhancementModule(nn.Module):
    """TEM: B_T (semantic block + DSRBs + PixelShuffle) -> coarse RGB SR, and B_M -> text-mask probabilities.

    Args:
        scale_factor: a power of 2.
        channels: feature and TP-map channels (the TP Interpreter's width must equal the feature width).
        num_blocks: DSRBs in series (the paper's figure draws 5).
        lr_size: LR (H, W); the TP Interpreter has one learned query per LR pixel.
        mask_branch: build B_M (False: Table 3 "w/o B_M").
        wavelet: of the DSRBs' frequency branch.
        tpg_hidden_size: LSTM width of the student TP generator (CRNN, `crnn.pth` layout at 256).
    """

    def __init__(
        self,
        scale_factor: int = 2,
        channels: int = 64,
        num_blocks: int = 5,
        lr_size: tuple[int, int] = (16, 64),
        mask_branch: bool = True,
        wavelet: str = "haar",
        tpg_hidden_size: int = 256,
    ) -> None:
        super().__init__()
        if scale_factor < 2 or scale_factor & (scale_factor - 1):
            raise ValueError(f"textdiff: scale_factor must be a power of 2, got {scale_factor}")
        self.lr_size = tuple(lr_size)
        self.tpg_hidden_size = tpg_hidden_size
        self.stem = SampleInception(3, channels)
        self.tpg = TPGenerator(tpg_hidden_size)
        self.tpi = TPInterpreter(t_emb=self.tpg.num_classes, out_text_channels=channels, feature_size=self.lr_size)
        self.blocks = nn.ModuleList(
            DoubleSequentialResidualBlock(channels, prior_channels=channels, wavelet=wavelet) for _ in range(num_blocks)
        )
        self.trunk_out = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))
        upsample = [UpsampleBlock(channels, 2) for _ in range(int(math.log2(scale_factor)))]
        self.upsample = nn.Sequential(*upsample, nn.Conv2d(channels, 3, kernel_size=9, padding=4))
        self.mask_predictor = MaskPredictor(3 + channels, channels, scale_factor) if mask_branch else None

    def forward(self, lr: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """lr (N, >=3, h, w) -> x_sr (N, 3, H, W), x_mask (N, 1, H, W) or None, student TP (N, 37, 1, 26)."""
        rgb = lr[:, :3]
        if rgb.shape[-2:] != self.lr_size:
            raise ValueError(f"textdiff: LR input must be {self.lr_size}, got {tuple(rgb.shape[-2:])}")
        shallow = self.stem(rgb)
        tp = self.tpg(rgb)
        tp_map, _ = self.tpi(tp.detach(), shallow)
        features = shallow
        for block in self.blocks:
            features = block(features, tp_map)
        x_sr = self.upsample(shallow + self.trunk_out(features))
        return x_sr, self.predict_mask(rgb, shallow), tp

    def predict_mask(self, rgb: Tensor, shallow: Tensor | None = None) -> Tensor | None:
        """B_M alone (the stem is recomputed when `shallow` is not given); None without a mask branch."""
        if self.mask_predictor is None:
            return None
        shallow = self.stem(rgb[:, :3]) if shallow is None else shallow
        return self.mask_predictor(torch.cat([rgb[:, :3], shallow], dim=1))


class TextDiff(nn.Module):
    """TEM + MRD U-Net + the residual diffusion schedule; `forward(lr)` = `refine(*coarse(lr))`.

    Args (TEM): scale_factor, channels, num_blocks, lr_size, wavelet, tpg_hidden_size (see TextEnhancementModule).
    Args (MRD): unet_channels, channel_multipliers, attention_levels, dropout (see MRDUNet; paper 64, (1, 2, 4, 4)).
    Args (diffusion): num_train_timesteps, beta_start, beta_end (paper: 200, 1e-6, 1e-2);
        num_inference_steps: default sampling steps (Table 5: 5, 20, 50, 110, 200);
        start_from_forward_noise: start from q(x_T | x0 = 0) instead of N(0, I) (see diffusion.gaussian);
        eta: 0 = deterministic DDIM, 1 = DDPM; None picks the paper's: 0 for x0-, 1 for noise-prediction.
    Args (Table 3): mask_branch, refiner ("diffusion" | "unet" = "NU"), prediction ("x0" | "noise" = "NP").
    """

    def __init__(
        self,
        scale_factor: int = 2,
        channels: int = 64,
        num_blocks: int = 5,
        lr_size: tuple[int, int] = (16, 64),
        tpg_hidden_size: int = 256,
        unet_channels: int = 64,
        channel_multipliers: tuple[int, ...] = (1, 2, 4, 4),
        attention_levels: tuple[int, ...] = (2, 3),
        dropout: float = 0.1,
        num_train_timesteps: int = 200,
        beta_start: float = 1e-6,
        beta_end: float = 1e-2,
        mask_branch: bool = True,
        refiner: Literal["diffusion", "unet"] = "diffusion",
        prediction: Literal["x0", "noise"] = "x0",
        num_inference_steps: int = 5,
        start_from_forward_noise: bool = False,
        eta: float | None = None,
        wavelet: str = "haar",
    ) -> None:
        super().__init__()
        if refiner not in ("diffusion", "unet"):
            raise ValueError(f"textdiff: refiner must be 'diffusion' or 'unet', got {refiner!r}")
        if prediction not in ("x0", "noise"):
            raise ValueError(f"textdiff: prediction must be 'x0' or 'noise', got {prediction!r}")
        if refiner == "unet" and prediction == "noise":
            raise ValueError("textdiff: refiner='unet' regresses the residual in one step; prediction must be 'x0'")
        self.scale_factor = scale_factor
        self.mask_branch, self.refiner, self.prediction = mask_branch, refiner, prediction
        self.tem = TextEnhancementModule(
            scale_factor, channels, num_blocks, lr_size, mask_branch, wavelet, tpg_hidden_size
        )
        self.denoiser = MRDUNet(
            image_channels=3,
            mask_channels=1 if mask_branch else 0,
            base_channels=unet_channels,
            channel_multipliers=tuple(channel_multipliers),
            attention_levels=tuple(attention_levels),
            dropout=dropout,
        )
        self.scheduler = ResidualDiffusionScheduler(
            num_train_timesteps,
            beta_start,
            beta_end,
            predict_noise=prediction == "noise",
            eta=(1.0 if prediction == "noise" else 0.0) if eta is None else eta,
            start_from_forward_noise=start_from_forward_noise,
        )
        self.scheduler.set_timesteps(num_inference_steps)  # validates the step count
        self.num_inference_steps = num_inference_steps

    def coarse_with_prior(self, lr: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        return self.tem(lr)

    def coarse(self, lr: Tensor) -> tuple[Tensor, Tensor | None]:
        """TEM: (x_sr (N, 3, H, W), x_mask (N, 1, H, W) or None without B_M)."""
        x_sr, x_mask, _ = self.tem(lr)
        return x_sr, x_mask

    def predict_mask(self, lr: Tensor) -> Tensor | None:
        """B_M's text mask of an LR image without running B_T (for plug-and-play refinement)."""
        return self.tem.predict_mask(lr)

    def training_prediction(self, lr: Tensor, hr: Tensor) -> dict[str, Tensor]:
        """One training step's forward: the TEM's outputs, and the MRD's estimate of the residual r = HR - x_sr from
        r noised at a random step (or, "NU", from nothing). Returns "sr_coarse", "residual", "tp_lr", "mask" (with
        B_M), "x0_pred", "sr" = x_sr + x0_pred, and with diffusion "noise", "timesteps" ("noise_pred" for NP)."""
        x_sr, x_mask, tp_lr = self.tem(lr)
        residual = hr[:, :3] - x_sr
        condition, mask_condition = x_sr.detach(), None if x_mask is None else x_mask.detach()
        outputs = {"sr_coarse": x_sr, "residual": residual, "tp_lr": tp_lr}
        if x_mask is not None:
            outputs["mask"] = x_mask
        if self.refiner == "unet":
            x0_pred = self.denoiser(None, None, condition, mask_condition)
        else:
            timesteps = torch.randint(0, self.scheduler.num_train_timesteps, (len(hr),), device=hr.device)
            noise = torch.randn_like(residual)
            noisy = self.scheduler.add_noise(residual.detach(), noise, timesteps)
            prediction = self.denoiser(noisy, timesteps, condition, mask_condition)
            x0_pred = self.scheduler.pred_original_sample(prediction, timesteps, noisy)
            outputs["noise"], outputs["timesteps"] = noise, timesteps
            if self.scheduler.predict_noise:
                outputs["noise_pred"] = prediction
        return {**outputs, "x0_pred": x0_pred, "sr": x_sr + x0_pred}

    def refine(
        self,
        x_sr: Tensor,
        x_mask: Tensor | None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """x_sr + the MRD's residual: one U-Net pass ("NU") or the reverse chain over the scheduler's sub-steps."""
        x_sr = x_sr[:, :3]
        if self.refiner == "unet":
            return x_sr + self.denoiser(None, None, x_sr, x_mask)
        steps = self.num_inference_steps if num_inference_steps is None else num_inference_steps
        if steps != self.scheduler.num_inference_steps or self.scheduler.timesteps.device != x_sr.device:
            self.scheduler.set_timesteps(steps, x_sr.device)
        residual = sample(
            lambda x_t, t: self.denoiser(x_t, t, x_sr, x_mask),
            tuple(x_sr.shape),
            self.scheduler,
            generator=generator,
            device=x_sr.device,
            dtype=x_sr.dtype,
        )
        return x_sr + residual

    def refine_output(self, sr: Tensor, lr: Tensor, num_inference_steps: int | None = None) -> Tensor:
        """Plug-and-play MRD (Table 4): another generator's SR refined by this MRD. The paper does not say where the
        mask comes from; the MRD was trained with B_M's mask of the LR image, so B_M reads the same LR here."""
        mask = self.predict_mask(lr)
        return match_input_channels(self.refine(sr, mask, num_inference_steps), lr, mask)

    def forward(self, lr: Tensor) -> Tensor:
        x_sr, x_mask = self.coarse(lr)
        return match_input_channels(self.refine(x_sr, x_mask), lr, x_mask)
