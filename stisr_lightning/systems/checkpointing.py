"""Checkpoints without the frozen parts: modules marked `frozen` (recognizers that evaluate or judge, a generator's
parts built from official files such as an autoencoder) come from packages or official files, so a checkpoint
leaves them out and loading restores them from the system itself."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule


class LeanCheckpoints(LightningModule):
    """A LightningModule whose checkpoints leave out every submodule marked `frozen`."""

    def frozen_prefixes(self) -> tuple[str, ...]:
        return tuple(f"{name}." for name, module in self.named_modules() if getattr(module, "frozen", False) is True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        prefixes = self.frozen_prefixes()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(prefixes)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The frozen parts come from the system; the step of the loaded weights is kept for results.json (a test
        after fit runs on the best checkpoint, not on the last step)."""
        self.loaded_checkpoint_step = checkpoint.get("global_step")
        prefixes = self.frozen_prefixes()
        own = {k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}
        checkpoint["state_dict"] = {**own, **checkpoint["state_dict"]}
