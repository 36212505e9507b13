"""ACIQ math (Banner, Nahshan, Soudry, NeurIPS 2019; official code submission2019/cnn-quantization).

Everything here is a pure tensor function; `stisr_lightning.quant.apply` wires it into a model.

* Optimal clipping: the expected MSE of clipping a Laplace(b) / Gaussian(sigma) variable to [-alpha, alpha] and
  quantizing the range uniformly with 2**M bins is solved numerically (golden section; the MSE is convex in alpha).
  The half-range (post-ReLU) model is the official `half_laplace_prior_mse`: one tail and half the noise of a range
  alpha, i.e. half the symmetric MSE at M + 1 bits, so its optimum is the symmetric one at M + 1 bits.
* Range mapping (official `alpha2DeltaOffset`): symmetric -> [max(min, mean - alpha), that + 2 alpha];
  half range -> [0, max(mean, 0) + alpha].
* Quantizer: GEMMLOWP-style asymmetric uniform quantize-dequantize (official `float2gemmlowp` kernel), with the zero
  point rounded so that 0 stays exactly representable whenever it lies strictly inside the range.
* Weights: per-output-channel min/max, optional bit allocation (eq. 11) and bias / variance correction.
"""

from __future__ import annotations

import math
from functools import cache

import torch
from torch import Tensor

DISTRIBUTIONS = ("laplace", "gaussian")
MAX_ALLOCATED_BITS = 8
"""Bit allocation clips each channel's bits to [0, 8] (official `get_bits_alloc`)."""


def clipping_mse(alpha: float, bits: int, distribution: str = "laplace", half_range: bool = False) -> float:
    """Expected clipping + quantization MSE for a unit-scale prior (Laplace b = 1, Gaussian sigma = 1)."""
    if half_range:
        return 0.5 * clipping_mse(alpha, bits + 1, distribution)
    noise = alpha**2 / (3 * 4**bits)
    if distribution == "laplace":
        return 2 * math.exp(-alpha) + noise
    if distribution == "gaussian":
        gauss_tail = math.sqrt(2 / math.pi) * alpha * math.exp(-(alpha**2) / 2)
        tails = (1 + alpha**2) * math.erfc(alpha / math.sqrt(2)) - gauss_tail
        return tails + noise
    raise ValueError(f"aciq: unknown distribution {distribution!r}; expected one of {DISTRIBUTIONS}")


@cache
def optimal_alpha(bits: int, distribution: str = "laplace", half_range: bool = False) -> float:
    """The clipping value alpha / b (Laplace) or alpha / sigma (Gaussian) that minimises `clipping_mse`."""
    lo, hi = 0.0, 40.0
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = clipping_mse(a, bits, distribution, half_range), clipping_mse(b, bits, distribution, half_range)
    while hi - lo > 1e-9:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = clipping_mse(a, bits, distribution, half_range)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = clipping_mse(b, bits, distribution, half_range)
    return (lo + hi) / 2


def _round_half_away(x: Tensor) -> Tensor:
    """C `roundf` (the official kernel), not torch's round-half-to-even."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def quantize_dequantize(x: Tensor, lo: Tensor | float, hi: Tensor | float, bits: Tensor | int) -> Tensor:
    """Uniform asymmetric quantization of `x` to 2**bits levels over [lo, hi], returned dequantized.

    `lo`, `hi` and `bits` broadcast against `x` (per-channel ranges are shaped (C, 1, ...)). A 0-bit or empty range
    collapses to the middle of the range.
    """
    lo, hi = torch.as_tensor(lo, dtype=x.dtype, device=x.device), torch.as_tensor(hi, dtype=x.dtype, device=x.device)
    levels = torch.as_tensor(2.0, dtype=x.dtype, device=x.device) ** torch.as_tensor(bits, device=x.device) - 1
    scale = ((hi - lo) / levels.clamp_min(1)).clamp_min(1e-8)
    zero_point = torch.where((lo < 0) & (hi > 0), _round_half_away(-lo / scale), -lo / scale)
    q = torch.floor(torch.minimum(torch.clamp_min(x / scale + zero_point, 0), levels) + 0.5)
    out = (q - zero_point) * scale
    return torch.where((levels > 0) & (hi > lo), out, (lo + hi) / 2)


def channel_range(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel (dim 0) min and max, shaped (C, 1, ..., 1) to broadcast against `weight`."""
    flat = weight.reshape(weight.shape[0], -1)
    shape = (weight.shape[0],) + (1,) * (weight.dim() - 1)
    return flat.min(1).values.view(shape), flat.max(1).values.view(shape)


def allocate_bits(alpha: Tensor, bits: int, max_iter: int = 10, eps: float = 0.01) -> Tensor:
    """Eq. 11: channel i gets bins proportional to alpha_i^(2/3) out of C * 2**bits, bits_i = ceil(log2(bins_i))
    clipped to [0, 8]; the target is nudged (at most `max_iter` times) until the mean matches `bits`."""
    p = alpha.float().clamp_min(1e-12) ** (2 / 3)
    target = float(bits)
    for _ in range(max_iter):
        bins = len(alpha) * 2**target * p / p.sum()
        allocation = torch.ceil(torch.log2(bins)).clamp(0, MAX_ALLOCATED_BITS)
        delta = (bits - allocation.mean().item()) / 2
        if abs(2 * delta) <= eps:
            break
        target += delta
    return allocation


def quantize_weight(
    weight: Tensor, bits: int, per_channel: bool = True, bit_allocation: bool = False
) -> tuple[Tensor, Tensor]:
    """Min/max quantize-dequantize of a weight whose output channels are dim 0; returns it and the bits of each
    channel. Bit allocation needs per-channel ranges and, as in the official code, acts only at <= 4 bits."""
    if per_channel:
        lo, hi = channel_range(weight)
    else:
        lo, hi = weight.min(), weight.max()
    channels = weight.shape[0]
    if per_channel and bit_allocation and bits <= 4:
        channel_bits = allocate_bits(weight.reshape(channels, -1).std(1), bits).to(weight.device)
    else:
        channel_bits = torch.full((channels,), float(bits), device=weight.device)
    shaped_bits = channel_bits.view((channels,) + (1,) * (weight.dim() - 1))
    return quantize_dequantize(weight, lo, hi, shaped_bits), channel_bits


def correct_weight(weight: Tensor, quantized: Tensor, bias: bool = True, variance: bool = False) -> Tensor:
    """Official -vcw / -bcw: per output channel rescale the quantized weight's spread to the float std, then shift
    its mean to the float mean, so the layer's expected output is unbiased."""
    shape = (weight.shape[0],) + (1,) * (weight.dim() - 1)
    flat, flat_q = weight.reshape(weight.shape[0], -1), quantized.reshape(weight.shape[0], -1)
    mean_q = flat_q.mean(1).view(shape)
    if variance:
        quantized = (quantized - mean_q) * (flat.std(1) / (flat_q.std(1) + 1e-8)).view(shape) + mean_q
    if bias:
        quantized = quantized - mean_q + flat.mean(1).view(shape)
    return quantized


STATISTICS = ("mean", "b", "std", "min", "max")


def activation_statistics(x: Tensor) -> Tensor:
    """Per-tensor statistics of one batch, stacked as `STATISTICS`: mean, Laplace b = mean |x - mean|, unbiased
    std, min and max over the whole batch (official on-the-fly statistics; its `-sm collect` averages per-sample
    extremes instead, which clips the tails of every sample whose extreme lies beyond the average)."""
    flat = x.detach().float().flatten()
    mean = flat.mean()
    std = flat.std() if flat.numel() > 1 else flat.new_zeros(())
    return torch.stack((mean, (flat - mean).abs().mean(), std, flat.min(), flat.max()))


def aciq_range(
    stats: Tensor, bits: int, distribution: str = "laplace", half_range: bool = False
) -> tuple[Tensor, Tensor]:
    """Clipping range [lo, hi] from `activation_statistics` (official `alpha2DeltaOffset`, no clip to max)."""
    mean, b, std, min_value = stats[0], stats[1], stats[2], stats[3]
    alpha = optimal_alpha(bits, distribution, half_range) * (b if distribution == "laplace" else std)
    if half_range:
        return torch.zeros_like(mean), mean.clamp_min(0) + alpha
    lo = torch.maximum(min_value, mean - alpha)
    return lo, lo + 2 * alpha
