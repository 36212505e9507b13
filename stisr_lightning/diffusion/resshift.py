"""ResShift residual-shifting diffusion (Yue et al.; the text-SR ResShift paper's Eq. 1-2, 6-10): schedule and steps.

diffusers-like and free of network code: `add_noise` for training, `set_timesteps` + `initial_sample` + `step` for
sampling. The chain moves x0 towards the degraded input y (both on whatever tensor space is given; the official code
and the paper work in VQGAN-f4 latent space):

    q(x_t | x0, y)         = N(x0 + eta_t (y - x0), kappa^2 eta_t I)
    q(x_{t-1} | x_t, x0)   = N(eta_{t-1}/eta_t x_t + alpha_t/eta_t x0, kappa^2 eta_{t-1} alpha_t / eta_t I),
                             alpha_t = eta_t - eta_{t-1}, eta_0 = 0
    prior x_T              = y + kappa sqrt(eta_T) eps

Conventions
- Timesteps are 0-based indices `t = 0 .. T-1` (the official code's `t`, fed to the network as is); index `t` is the
  paper's step `t + 1`, so `sqrt_etas[0]` is sqrt(eta_1) and `sqrt_etas[T-1]` is sqrt(eta_T). eta_0 = 0 is implicit:
  the step from index 0 has mean exactly x0 and variance 0 (official `etas_prev = [0, etas[:-1]]`).
- Schedule ("exponential", official `get_named_eta_schedule`): sqrt(eta_1) = min(min_noise_level / kappa,
  min_noise_level), sqrt(eta_T) = etas_end, sqrt(eta_t) = sqrt(eta_1) b^{((t-1)/(T-1))^power (T-1)} with
  b = (etas_end / sqrt(eta_1))^{1/(T-1)}. An older official revision also capped sqrt(eta_1) at sqrt(0.001); the
  released v3 table (0.100, 0.520, 0.761, 0.990) needs the uncapped form used here.
- Prior: the exact marginal at t = T (Eq. 8 at T, official `prior_sample`). The paper's Algorithm 2 writes
  y + kappa eps, i.e. eta_T ~ 1; with etas_end = 0.99 the two differ by 1 % of the noise scale.
- Sub-steps: ResShift trains and samples every one of its T steps (15 in v1/v2, 4 in v3; the text paper states
  T = 18). For n < T, the chain is a Brownian motion in eta (mean and variance both linear in eta), so the posterior
  formula above is exact between any two kept steps s < t with eta_s in place of eta_{t-1}. Which steps are kept:
  "trailing" (default, as in gaussian.py): `t_i = floor(T (n - i) / n) - 1`, always starting at T-1 where the prior
  is the true marginal; "leading" (official `space_timesteps`): `int(T / n * i)`, always keeping 0 but starting
  below T-1 (the official prior then uses that smaller eta). Both give the full chain for n = T.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from stisr_lightning.diffusion.tables import ScheduleTables

_SPACINGS = ("trailing", "leading")


class ResShiftScheduler(ScheduleTables):
    """Residual-shifting chain with an x0-predicting network (the paper's f_theta; official `predict_type: xstart`).

    Args:
        num_train_timesteps: T (15 = ResShift v1/v2; see `v3` for the 4-step journal preset).
        kappa: noise scale; the chain's variance at step t is kappa^2 eta_t.
        min_noise_level: sets sqrt(eta_1) = min(min_noise_level / kappa, min_noise_level).
        etas_end: sqrt(eta_T), just below 1 so that x_T ~ y.
        power: exponent p that bunches the schedule near t = 1 (0.3 in every official config).
        timestep_spacing: "trailing" or "leading" (official), the rule for n < T inference steps (see module doc).
    """

    def __init__(
        self,
        num_train_timesteps: int = 15,
        kappa: float = 2.0,
        min_noise_level: float = 0.04,
        etas_end: float = 0.99,
        power: float = 0.3,
        timestep_spacing: str = "trailing",
    ) -> None:
        total = num_train_timesteps
        if total < 2:
            raise ValueError(f"resshift: num_train_timesteps must be >= 2, got {total}")
        if kappa <= 0:
            raise ValueError(f"resshift: kappa must be > 0, got {kappa}")
        if power <= 0:
            raise ValueError(f"resshift: power must be > 0, got {power}")
        sqrt_eta_start = min(min_noise_level / kappa, min_noise_level)
        if not 0 < sqrt_eta_start < etas_end <= 1:
            raise ValueError(
                "resshift: need 0 < min(min_noise_level / kappa, min_noise_level) < etas_end <= 1, "
                f"got min_noise_level={min_noise_level}, kappa={kappa}, etas_end={etas_end}"
            )
        if timestep_spacing not in _SPACINGS:
            raise ValueError(f"resshift: timestep_spacing must be one of {_SPACINGS}, got {timestep_spacing!r}")
        self.num_train_timesteps = total
        self.kappa = kappa
        self.timestep_spacing = timestep_spacing
        base = math.exp(math.log(etas_end / sqrt_eta_start) / (total - 1))
        exponent = torch.linspace(0, 1, total, dtype=torch.float64) ** power * (total - 1)
        self._etas64 = (sqrt_eta_start * base**exponent) ** 2
        self.sqrt_etas = self._etas64.sqrt().float()
        self.etas = self._etas64.float()
        self.noise_std = (kappa * self._etas64.sqrt()).float()
        self.input_scale = (kappa**2 * self._etas64 + 1).rsqrt().float()
        self._device_tables: dict[tuple[str, torch.device], Tensor] = {}
        self.set_timesteps(total)

    @classmethod
    def v3(cls, **overrides: Any) -> ResShiftScheduler:
        """ResShift v3 / journal and x2 configs: T = 4, kappa = 2, min_noise_level = 0.2 (sqrt(eta_1) = 0.1)."""
        return cls(**{"num_train_timesteps": 4, "kappa": 2.0, "min_noise_level": 0.2, **overrides})

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Choose the sampling sub-sequence and precompute, on `device`, every table `step` reads."""
        steps, total = num_inference_steps, self.num_train_timesteps
        if not 1 <= steps <= total:
            raise ValueError(f"resshift: num_inference_steps must be in 1..{total}, got {steps}")
        if self.timestep_spacing == "trailing":
            timesteps = [total * (steps - i) // steps - 1 for i in range(steps)]
        else:
            timesteps = [int(total / steps * i) for i in range(steps)][::-1]
        index = torch.tensor(timesteps, dtype=torch.int64)
        # eta of the step each timestep jumps to: the next kept one, eta_0 = 0 after the last (others: eta_{t-1}).
        eta = self._etas64
        eta_prev = torch.cat([eta.new_zeros(1), eta[:-1]])
        eta_prev[index[:-1]] = eta[index[1:]]
        eta_prev[index[-1]] = 0.0
        self.num_inference_steps = steps
        self.timesteps = index.to(device if device is not None else "cpu")
        self.posterior_sample_coef = (eta_prev / eta).float()
        self.posterior_original_coef = ((eta - eta_prev) / eta).float()
        self.posterior_std = (self.kappa * (eta_prev * (eta - eta_prev) / eta).sqrt()).float()
        self._prior_std = float(self.kappa * eta[index[0]].sqrt())
        self._device_tables = {}
        device = self.timesteps.device  # "cuda" -> "cuda:0", the key samples will look up
        for name in _STEP_TABLES:
            self._table(name, device)

    def add_noise(self, original_samples: Tensor, degraded_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """q(x_t | x0, y) = x0 + eta_t (y - x0) + kappa sqrt(eta_t) noise; timesteps (N,) or scalar."""
        shift = self._coefficient("etas", timesteps, original_samples)
        spread = self._coefficient("noise_std", timesteps, original_samples)
        return original_samples + shift * (degraded_samples - original_samples) + spread * noise

    def scale_input(self, sample: Tensor, t: Tensor | int) -> Tensor:
        """The network's input x_t / sqrt(kappa^2 eta_t + 1) (official `_scale_input`, latent case).

        The official code feeds the denoiser this normalized x_t (latent std ~1 plus the chain's variance); in pixel
        space it divides by 3 kappa sqrt(eta_t) + 1 instead, a variant not provided here.
        """
        return sample * self._coefficient("input_scale", t, sample)

    def initial_sample(
        self, degraded_samples: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """The prior y + kappa sqrt(eta) noise at the first sampling timestep (T-1 unless "leading" with n < T)."""
        if noise is None:
            noise = _randn_like(degraded_samples, generator)
        return degraded_samples + self._prior_std * noise

    def _posterior_mean(self, original: Tensor, t: Tensor | int, sample: Tensor) -> Tensor:
        mean = self._coefficient("posterior_sample_coef", t, sample) * sample
        return mean + self._coefficient("posterior_original_coef", t, sample) * original

    def step(
        self,
        model_output: Tensor,
        t: Tensor | int,
        sample: Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """x_t -> x_prev ~ q(x_prev | x_t, x0 = model_output); t a scalar or one index per sample.

        The last step has variance exactly 0, so it returns x0 whatever the noise. The official sampler clamps the
        x0 prediction to [-1, 1] only when diffusing in pixel space; do that on `model_output` if needed.
        """
        mean = self._posterior_mean(model_output, t, sample)
        if noise is None:
            noise = _randn_like(sample, generator)
        return mean + self._coefficient("posterior_std", t, sample) * noise


_STEP_TABLES = ("etas", "noise_std", "input_scale", "posterior_sample_coef", "posterior_original_coef", "posterior_std")


def _randn_like(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def sample(
    model_fn: Callable[[Tensor, Tensor], Tensor],
    degraded_samples: Tensor,
    scheduler: ResShiftScheduler,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run the reverse chain from the prior of y; `model_fn(scale_input(x_t), t)` predicts x0, t a 0-d device tensor.

    Call `scheduler.set_timesteps(n, device)` first; the loop itself does no host-device synchronization.
    """
    x = scheduler.initial_sample(degraded_samples, generator=generator)
    for t in scheduler.timesteps.to(x.device):
        x = scheduler.step(model_fn(scheduler.scale_input(x, t), t), t, x, generator=generator)
    return x
