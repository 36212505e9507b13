"""TATT (Ma et al., CVPR 2022) as a system: a frozen teacher TPG reads HR, the generator's student TPG reads LR, and
a rotation path feeds the TSSIM loss. Inference is the base system's (`generator(lr)`, student TPG included).

Outputs of `forward_train` (what `losses.tatt` and `losses.pixel` read):
- "sr": G(lr); "tp_lr": the student TP of lr (with gradients); "tp_hr": the teacher TP of hr (no gradients);
- with `rotate_degrees > 0`: "sr_rotated" = G(rotate(lr)) using the TP of the un-rotated lr, "sr_rerotated" =
  rotate(sr), "hr_rotated" = rotate(hr), one random angle and aspect ratio per sample shared by all three.
  The official code builds the un-rotated branch by rotating the rotated LR back (a second resampling); here the
  original LR is used directly, which is the image that branch approximates.

experiments/tatt.yaml writes the official total 100 * (MSE + 1e-4 GP) + 100 * distill + 10 * TSSIM as a LossMix with
scale 100 and weights {mse: 1, gradient_prior: 1e-4, distill: 1, tssim: 0.1}.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils import clip_grad_norm_

from stisr_lightning.losses.mix import LossMix
from stisr_lightning.losses.tatt import rotate_images, sample_rotations
from stisr_lightning.models.blocks.text_prior import TPGenerator
from stisr_lightning.models.generators.tatt import TATT
from stisr_lightning.systems.base import STISRSystem
from stisr_lightning.weights import report_untrained


class TATTSystem(STISRSystem):
    def __init__(
        self,
        generator: TATT,
        loss: LossMix | None = None,
        teacher_weights: str | None = None,
        init_student_from_teacher: bool = True,
        rotate_degrees: float = 5.0,
        ratio_jitter: float = 0.2,
        clip_student_tpg: bool = False,
        rotation_seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            generator: a TATT generator (it holds the student TPG).
            teacher_weights: a CRNN state dict (`crnn.pth`, or one trained by experiments/recognizers/crnn_synth.yaml)
                for the frozen teacher; None leaves the teacher random (tests only: its TP then teaches nothing).
            init_student_from_teacher: the student starts from the same file, as in the official recipe; turn off when
                the generator was already loaded with a trained student (`load_official_tatt`).
            rotate_degrees: maximum absolute angle of the TSSIM rotations; 0 disables the rotation path.
            ratio_jitter: the official random offset of the aspect ratio used by the rotation's grid.
            clip_student_tpg: gradient clipping (trainer.gradient_clip_val) also covers the student TPG; the
                official code clips the SR network only.
            rotation_seed: seed of the rotation draws (None: torch's global generator).
            kwargs: everything else of `STISRSystem` (recognizers, lr, betas, ...). The student TPG is in the
                generator's parameter group (same lr, as official); `generator_group_lrs: {tpg: ...}` changes that.
        """
        super().__init__(generator, loss, **kwargs)
        if not isinstance(generator, TATT):
            raise ValueError(f"TATTSystem.generator must be a TATT, got {type(generator).__name__}")
        if rotate_degrees < 0:
            raise ValueError(f"TATTSystem.rotate_degrees must be >= 0, got {rotate_degrees}")
        self.teacher_tpg = TPGenerator()
        if not teacher_weights and loss is not None:
            report_untrained("TATTSystem: no teacher_weights, so the teacher text-prior CRNN is random and its prior "
                             "teaches nothing; give crnn.pth or runs/crnn_synth/crnn.pth")
        if teacher_weights:
            self.teacher_tpg.load_crnn_weights(teacher_weights)
            if init_student_from_teacher:
                generator.tpg.load_crnn_weights(teacher_weights)
        self.teacher_tpg.crnn.freeze()
        self.rotate_degrees = rotate_degrees
        self.ratio_jitter = ratio_jitter
        self.clip_student_tpg = clip_student_tpg
        self.rotation_generator = torch.Generator().manual_seed(rotation_seed) if rotation_seed is not None else None

    def forward_train(self, batch: dict[str, Any]) -> dict[str, Any]:
        lr, hr = batch["lr"], batch["hr"]
        sr, tp_lr = self.generator.forward_with_prior(lr)
        with torch.no_grad():
            tp_hr = self.teacher_tpg(hr)
        outputs = {"sr": sr, "tp_lr": tp_lr, "tp_hr": tp_hr}
        if self.rotate_degrees > 0:
            height, width = lr.shape[-2:]
            angles, ratios = sample_rotations(
                lr.shape[0], self.rotate_degrees, height / width, self.ratio_jitter, self.rotation_generator, lr.device
            )
            outputs["sr_rotated"] = self.generator.reconstruct(rotate_images(lr, angles, ratios), tp_lr)
            outputs["sr_rerotated"] = rotate_images(sr, angles, ratios)
            outputs["hr_rotated"] = rotate_images(hr, angles, ratios)
        return outputs

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by norm over every optimized parameter except, unless `clip_student_tpg`, the student TPG."""
        if not gradient_clip_val:
            return
        if gradient_clip_algorithm not in (None, "norm"):
            raise ValueError(f"TATTSystem: gradient_clip_algorithm must be 'norm', got {gradient_clip_algorithm!r}")
        excluded = set() if self.clip_student_tpg else {id(p) for p in self.generator.tpg.parameters()}
        params = [p for group in optimizer.param_groups for p in group["params"] if id(p) not in excluded]
        clip_grad_norm_(params, gradient_clip_val)
