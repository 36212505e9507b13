"""TextDiff (Liu et al.) as a system: TEM and MRD trained jointly (Algorithm 1), a frozen teacher TPG on HR for the
text-prior loss as in TATT, and an optional EMA of the generator used for evaluation (AdamW: experiments/textdiff.yaml).

Outputs of `forward_train` (the generator's `training_prediction` and the teacher's TP; what `losses.textdiff`,
`losses.tatt` read):
- "sr_coarse": x_sr = B_T(lr); "mask": B_M(lr) (absent without B_M); "tp_lr"/"tp_hr": student/teacher TPs;
- "residual": the target x0 = hr_rgb - x_sr (not detached: L_DM and L_Edge also pull x_sr, as in DocDiff);
- "noise", "timesteps": the drawn eps and t (N,); "x0_pred": the MRD's estimate of x0 (converted from eps under
  noise-prediction);
  "noise_pred": the raw eps prediction (noise-prediction only);
- "sr": x_sr + x0_pred, the one-step estimate of the final image (L_joint's input; logging).
The MRD reads x_t = add_noise(residual, eps, t), t uniform over the T training steps, and conditions on x_sr and
x_m detached (DocDiff detaches the coarse condition; B_M is trained by the Dice loss only). Under "NU" the U-Net
regresses x0 from (zeros, x_sr, x_m) in one pass.

experiments/textdiff.yaml writes L_TEM + L_MRD + lambda L_joint = 0.5 GP + 3 Dice + TP + DM + Edge + 5 joint as a
LossMix; "w/o L_joint" is weight 0 on `joint`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from stisr_lightning.losses.mix import LossMix
from stisr_lightning.losses.textdiff import DiceLoss, ResidualDiffusionLoss
from stisr_lightning.models.blocks.text_prior import TPGenerator
from stisr_lightning.models.generators.textdiff import TextDiff
from stisr_lightning.systems.base import STISRSystem
from stisr_lightning.weights import report_untrained


class TextDiffSystem(STISRSystem):
    legacy_optimizer = "torch.optim.AdamW"

    def __init__(
        self,
        generator: TextDiff,
        loss: LossMix | None = None,
        teacher_weights: str | None = None,
        init_student_from_teacher: bool = True,
        ema_decay: float | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            generator: a TextDiff generator (its TEM holds the student TPG).
            loss: the loss mix; its terms must match the generator (noise-prediction L_DM iff prediction='noise',
                no Dice term without B_M), checked here.
            teacher_weights: a CRNN state dict (`crnn.pth`, or `runs/crnn_synth/crnn.pth`) for the frozen teacher
                TPG on HR; None leaves it random (tests only: L_TP then teaches nothing).
            init_student_from_teacher: the student TPG starts from the same file, as TATT does.
            ema_decay: keep an exponential moving average of the generator (DocDiff: 0.9999), updated after every
                training step and used for validation and test once it holds an average; None disables it.
            kwargs: everything else of `STISRSystem` (recognizers, optimizer, ...). experiments/textdiff.yaml's
                optimizer is AdamW (paper: lr 1e-4; weight decay 1e-4 as DocDiff, TextDiff's code base).
        """
        super().__init__(generator, loss, **kwargs)
        if not isinstance(generator, TextDiff):
            raise ValueError(f"TextDiffSystem.generator must be a TextDiff, got {type(generator).__name__}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"TextDiffSystem.ema_decay must be in (0, 1) or null, got {ema_decay}")
        self._check_loss_matches(generator, loss)
        self.teacher_tpg = TPGenerator(generator.tem.tpg_hidden_size)
        if not teacher_weights and loss is not None:
            report_untrained("TextDiffSystem: no teacher_weights, so the teacher text-prior CRNN is random and its prior "
                             "teaches nothing; give crnn.pth or runs/crnn_synth/crnn.pth")
        if teacher_weights:
            self.teacher_tpg.load_crnn_weights(teacher_weights)
            if init_student_from_teacher:
                generator.tem.tpg.load_crnn_weights(teacher_weights)
        self.teacher_tpg.crnn.freeze()
        self.ema_decay = ema_decay
        self.ema = None
        if ema_decay is not None:
            self.ema = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            self.ema.requires_grad_(False)

    @staticmethod
    def _check_loss_matches(generator: TextDiff, loss: LossMix | None) -> None:
        if loss is None:
            return
        for name, term in loss.terms.items():
            if loss.weights[name] == 0.0:
                continue
            if isinstance(term, ResidualDiffusionLoss) and term.predict_noise != (generator.prediction == "noise"):
                raise ValueError(
                    f"TextDiffSystem: loss term {name!r} has predict_noise={term.predict_noise} but the generator "
                    f"predicts {generator.prediction!r}; set both (loss.init_args.terms.{name}.init_args.predict_noise)"
                )
            if isinstance(term, DiceLoss) and not generator.mask_branch:
                raise ValueError(f"TextDiffSystem: loss term {name!r} needs B_M but mask_branch=false; weight it 0")

    # ----------------------------------------------------------------------------------------------- hooks
    def forward_train(self, batch: dict[str, Any]) -> dict[str, Any]:
        outputs = self.generator.training_prediction(batch["lr"], batch["hr"])
        with torch.no_grad():
            outputs["tp_hr"] = self.teacher_tpg(batch["hr"][:, :3])
        return outputs

    def super_resolve(self, lr: Tensor, batch: dict[str, Any] | None = None) -> Tensor:
        if self.ema is not None and int(self.ema.n_averaged) > 0:
            return self.ema.module(lr)
        return self.generator(lr)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.generator)
