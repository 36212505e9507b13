"""Gaussian diffusion on residuals (TextDiff's MRD, after DocDiff): schedule, forward noising and reverse steps.

diffusers-like and free of network code: `add_noise` for training, `set_timesteps` + `step` for sampling.

Conventions
- Timesteps are 0-based indices `t = 0 .. T-1`; index `t` is the paper's step `t + 1`, so
  `alphas_cumprod[t] = prod_{i <= t} (1 - beta_i)` and `alphas_cumprod[T-1]` is the paper's alpha_bar_T.
  With TextDiff's schedule (T = 200, beta linear 1e-6 .. 1e-2) alpha_bar_T = 0.3666: x_T keeps ~61 % of x0.
- Sub-step rule ("trailing" spacing): for n inference steps, `t_i = floor(T (n - i) / n) - 1, i = 0 .. n-1`.
  Sampling always starts at T-1, n = T is the full chain, and the last step jumps to alpha_bar = 1 (the clean
  sample), so any n in 1..T works (5 -> [199, 159, 119, 79, 39]; 110, which does not divide 200, is uneven).
- `step` is the generalized DDIM update with `eta`: eta = 0 is deterministic (the paper's Eq. 9 / Algorithm 2),
  eta = 1 is ancestral DDPM sampling (the posterior variance of q(x_{t-1} | x_t, x0) on the full chain), used by
  the noise-prediction ablation ("NP").
- Starting state: the paper's Algorithm 2 draws x_T ~ N(0, I). Because alpha_bar_T is far from 0, training never
  shows the network such an x_T; `start_from_forward_noise=True` instead starts from q(x_T | x0 = 0), i.e.
  sqrt(1 - alpha_bar_T) * eps: the forward-noised state of a zero residual (the only x0 known at inference, and the
  mean of the residual distribution when the coarse image is unbiased).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from stisr_lightning.diffusion.tables import ScheduleTables


class ResidualDiffusionScheduler(ScheduleTables):
    """Linear-beta Gaussian diffusion with x0- or noise-prediction and DDIM/DDPM reverse steps.

    Args:
        num_train_timesteps: T.
        beta_start, beta_end: linear beta schedule over the T steps.
        predict_noise: the network predicts eps instead of x0 (Table 3 "NP"); `step` converts either way.
        eta: 0 = deterministic DDIM (paper), 1 = stochastic DDPM; values in between interpolate.
        start_from_forward_noise: `initial_sample` returns sqrt(1 - alpha_bar) * eps instead of eps (see module doc).
    """

    def __init__(
        self,
        num_train_timesteps: int = 200,
        beta_start: float = 1e-6,
        beta_end: float = 1e-2,
        predict_noise: bool = False,
        eta: float = 0.0,
        start_from_forward_noise: bool = False,
    ) -> None:
        if num_train_timesteps < 1:
            raise ValueError(f"gaussian: num_train_timesteps must be >= 1, got {num_train_timesteps}")
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"gaussian: need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        if eta < 0:
            raise ValueError(f"gaussian: eta must be >= 0, got {eta}")
        self.num_train_timesteps = num_train_timesteps
        self.predict_noise = predict_noise
        self.eta = eta
        self.start_from_forward_noise = start_from_forward_noise
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        self._alphas_cumprod64 = torch.cumprod(1.0 - betas, dim=0)
        self.betas = betas.float()
        self.alphas_cumprod = self._alphas_cumprod64.float()
        # Square roots are taken in float64: 1 - alpha_bar is ~1e-6 at t = 0, below float32 resolution near 1.
        self.sqrt_alphas_cumprod = self._alphas_cumprod64.sqrt().float()
        self.sqrt_one_minus_alphas_cumprod = (1 - self._alphas_cumprod64).sqrt().float()
        self._device_tables: dict[tuple[str, torch.device], Tensor] = {}
        self.set_timesteps(num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Choose the sampling sub-sequence and precompute, on `device`, every table `step` reads."""
        steps, total = num_inference_steps, self.num_train_timesteps
        if not 1 <= steps <= total:
            raise ValueError(f"gaussian: num_inference_steps must be in 1..{total}, got {steps}")
        index = torch.arange(steps, dtype=torch.int64)
        timesteps = total * (steps - index) // steps - 1
        # Per-timestep coefficients of the jump to the next timestep (the last one lands on alpha_bar = 1).
        alpha = self._alphas_cumprod64
        alpha_prev = torch.ones(total, dtype=torch.float64)
        alpha_prev[timesteps[:-1]] = alpha[timesteps[1:]]
        variance = (1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)
        sigma = self.eta * variance.clamp(min=0).sqrt()
        self.num_inference_steps = steps
        self.timesteps = timesteps.to(device if device is not None else "cpu")
        self.sqrt_alphas_cumprod_prev = alpha_prev.sqrt().float()
        self.noise_direction_scale = (1 - alpha_prev - sigma**2).clamp(min=0).sqrt().float()
        self.noise_scale = sigma.float()
        self._device_tables = {}
        device = self.timesteps.device  # "cuda" -> "cuda:0", the key samples will look up
        for name in _STEP_TABLES:
            self._table(name, device)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """q(x_t | x0) = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise; timesteps (N,) or scalar."""
        signal = self._coefficient("sqrt_alphas_cumprod", timesteps, original_samples)
        spread = self._coefficient("sqrt_one_minus_alphas_cumprod", timesteps, original_samples)
        return signal * original_samples + spread * noise

    def pred_original_sample(self, model_output: Tensor, t: Tensor | int, sample: Tensor) -> Tensor:
        """The network's estimate of x0, converted from eps when `predict_noise`."""
        if not self.predict_noise:
            return model_output
        signal = self._coefficient("sqrt_alphas_cumprod", t, sample)
        spread = self._coefficient("sqrt_one_minus_alphas_cumprod", t, sample)
        return (sample - spread * model_output) / signal

    def initial_sample(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """x at the first sampling timestep: N(0, I), or the forward-noised zero residual (see module doc)."""
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        if not self.start_from_forward_noise:
            return noise
        return self._coefficient("sqrt_one_minus_alphas_cumprod", self.timesteps[:1], noise) * noise

    def step(
        self, model_output: Tensor, t: Tensor | int, sample: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """x_t -> x_prev for `t` in `self.timesteps` (after `set_timesteps`); t a scalar or one index per sample."""
        signal = self._coefficient("sqrt_alphas_cumprod", t, sample)
        spread = self._coefficient("sqrt_one_minus_alphas_cumprod", t, sample)
        if self.predict_noise:
            noise_pred = model_output
            original = (sample - spread * noise_pred) / signal
        else:
            original = model_output
            noise_pred = (sample - signal * original) / spread
        prev = self._coefficient("sqrt_alphas_cumprod_prev", t, sample) * original
        prev = prev + self._coefficient("noise_direction_scale", t, sample) * noise_pred
        if self.eta == 0:
            return prev
        noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        return prev + self._coefficient("noise_scale", t, sample) * noise


_STEP_TABLES = (
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "sqrt_alphas_cumprod_prev",
    "noise_direction_scale",
    "noise_scale",
)


def sample(
    model_fn: Callable[[Tensor, Tensor], Tensor],
    shape: tuple[int, ...],
    scheduler: ResidualDiffusionScheduler,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Run the reverse chain over `scheduler.timesteps`; `model_fn(x_t, t)` gets t as a 0-d device tensor.

    Call `scheduler.set_timesteps(n, device)` first; the loop itself does no host-device synchronization.
    """
    x = scheduler.initial_sample(shape, generator=generator, device=device, dtype=dtype)
    for t in scheduler.timesteps.to(x.device):
        x = scheduler.step(model_fn(x, t), t, x, generator=generator)
    return x
