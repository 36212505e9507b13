"""LEMMA (Guan et al., IJCAI 2023) as a system: the generator also returns its text prior, which the fine-tune
loss reads; everything else (test loop, metrics, checkpoints) is the base system's.

The loss mix of experiments/lemma.yaml is L = L_pix + alpha1 * L_txt + alpha2 * L_ft:
- L_pix: PixelMSE over all channels (`outputs["sr"]` vs `batch["hr"]`);
- L_txt: TextFocusLoss (the frozen STT transformer's attention L1 and confusion-weighted CE);
- L_ft: PriorFineTuneCE on `outputs["prior"]` (the ABINet prior's vision and language logits), which is how the
  prior is fine-tuned at its own learning rate (`generator_group_lrs: {position_prior: 1.0e-4}`).
"""

from __future__ import annotations

from typing import Any

from stisr_lightning.systems.base import STISRSystem


class LEMMASystem(STISRSystem):
    def forward_train(self, batch: dict[str, Any]) -> dict[str, Any]:
        sr, prior = self.generator.forward_with_prior(batch["lr"])
        return {"sr": sr, "prior": prior}
