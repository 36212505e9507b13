"""Diffusion schedulers (diffusers-like set_timesteps / step / add_noise); no network code here."""

from stisr_lightning.diffusion.gaussian import ResidualDiffusionScheduler, sample
from stisr_lightning.diffusion.resshift import ResShiftScheduler

__all__ = ["ResShiftScheduler", "ResidualDiffusionScheduler", "sample"]
