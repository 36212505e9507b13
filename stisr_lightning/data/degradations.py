"""Batched, per-sample seeded degradations for making LR text images (BSRGAN, Real-ESRGAN, LEMMA's STR protocol).

Every function takes images (N,3,H,W) in [0,1] on any device. Randomness comes from `SampleRNG`, a counter-based
generator: each value is a hash of (seed, sample id, stream name, element), so a sample's degradation does not depend
on which other samples share its batch, on their order, or on the device.

To keep a batch one tensor, a random-scale resize is done as a round trip (down to the sample's scale and back);
only the resize to the final LR size changes the shape. BSRGAN's per-sample op order is run slot by slot, with the
samples that have passed their final downsample held on a second, LR-sized canvas.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kornia.enhance import jpeg_codec_differentiable

RESIZE_MODES = ("area", "bilinear", "bicubic")
_GOLDEN = 0x9E3779B9


def _int32(value: int | torch.Tensor) -> torch.Tensor:
    """The low 32 bits of an integer (or int64 tensor) as a signed int32 tensor."""
    value = torch.as_tensor(value, dtype=torch.int64) & 0xFFFFFFFF
    return (value - ((value & 0x80000000) << 1)).to(torch.int32)


def _hash32_(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash, in place on an int32 tensor (multiplication wraps modulo 2**32)."""
    x ^= (x >> 16) & 0xFFFF
    x *= _int32(0x7FEB352D)
    x ^= (x >> 15) & 0x1FFFF
    x *= _int32(0x846CA68B)
    x ^= (x >> 16) & 0xFFFF
    return x


class SampleRNG:
    """Counter-based random numbers: row i of every draw depends only on (seed, ids[i], stream name)."""

    def __init__(self, seed: int, ids: torch.Tensor) -> None:
        ids = torch.as_tensor(ids, dtype=torch.int64)
        self.seed = int(seed)
        self.ids = ids
        key = _hash32_(_int32(self.seed) ^ _int32(_GOLDEN))
        key = _hash32_(key ^ _int32(self.seed >> 32))
        key = _hash32_(key ^ _int32(ids))
        self.keys = _hash32_(key ^ _int32(ids >> 32))

    def subset(self, index: torch.Tensor) -> SampleRNG:
        return SampleRNG(self.seed, self.ids[index.cpu()]).to(self.keys.device)

    def to(self, device: torch.device | str) -> SampleRNG:
        rng = SampleRNG.__new__(SampleRNG)
        rng.seed, rng.ids, rng.keys = self.seed, self.ids, self.keys.to(device)
        return rng

    def bits(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """Raw 32-bit hashes (int32), shape (N, *shape): hash(hash(element) ^ hash(sample key ^ stream))."""
        stream = _hash32_(self.keys ^ _int32(zlib.crc32(name.encode())))
        counter = _hash32_(torch.arange(math.prod(shape), dtype=torch.int32, device=self.keys.device) * _int32(_GOLDEN))
        return _hash32_(stream[:, None] ^ counter[None, :]).reshape(len(self.keys), *shape)

    def uniform(self, name: str, *shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """Uniform in the open interval (low, high), shape (N, *shape), float32."""
        unit = (((self.bits(name, shape) >> 8) & 0xFFFFFF).float() + 0.5) / float(1 << 24)
        return low + (high - low) * unit

    def normal(self, name: str, *shape: int) -> torch.Tensor:
        """Standard normal via Box-Muller, shape (N, *shape)."""
        u1 = self.uniform(name + "/u1", *shape)
        u2 = self.uniform(name + "/u2", *shape)
        return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)

    def bernoulli(self, name: str, probability: float) -> torch.Tensor:
        return self.uniform(name) < probability

    def choice(self, name: str, probabilities: tuple[float, ...]) -> torch.Tensor:
        """Category index per sample, (N,) int64."""
        edges = torch.tensor(probabilities, dtype=torch.float32, device=self.keys.device).cumsum(0)
        edges = edges / edges[-1]
        return torch.searchsorted(edges, self.uniform(name).contiguous(), right=True).clamp_max(len(probabilities) - 1)

    def integers(self, name: str, low: int, high: int) -> torch.Tensor:
        """Integers in [low, high] inclusive, (N,) int64."""
        return (low + (self.uniform(name) * (high - low + 1)).floor().long()).clamp_max(high)


# --------------------------------------------------------------------------------------------------------- kernels
def _kernel_grid(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    radius = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    return torch.meshgrid(radius, radius, indexing="ij")


def _quadratic_form(sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """x^T Sigma^-1 x on a size x size grid for per-sample covariances (eigen-scales sigma_x/y rotated by theta)."""
    yy, xx = _kernel_grid(size, sigma_x.device)
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    along = cos * xx + sin * yy
    across = -sin * xx + cos * yy
    return (along / sigma_x[:, None, None]) ** 2 + (across / sigma_y[:, None, None]) ** 2


def restrict_kernel_size(kernels: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Zero each kernel outside its own odd `sizes[i]` window (centred) and renormalise to sum 1."""
    grid = kernels.shape[-1]
    yy, xx = _kernel_grid(grid, kernels.device)
    half = (sizes.to(kernels.dtype)[:, None, None] - 1) / 2
    inside = (yy.abs()[None] <= half) & (xx.abs()[None] <= half)
    kernels = kernels * inside
    return kernels / kernels.sum(dim=(-2, -1), keepdim=True)


def gaussian_kernels(sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """Anisotropic Gaussian kernels (N,size,size); sigma_x == sigma_y gives the isotropic one."""
    return restrict_kernel_size(torch.exp(-0.5 * _quadratic_form(sigma_x, sigma_y, theta, size)), _full(sigma_x, size))


def generalized_gaussian_kernels(
    sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor, beta: torch.Tensor, size: int
) -> torch.Tensor:
    """exp(-0.5 (x^T Sigma^-1 x)^beta) (Real-ESRGAN's generalized Gaussian)."""
    form = _quadratic_form(sigma_x, sigma_y, theta, size)
    return restrict_kernel_size(torch.exp(-0.5 * form ** beta[:, None, None]), _full(sigma_x, size))


def plateau_kernels(
    sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor, beta: torch.Tensor, size: int
) -> torch.Tensor:
    """1 / (1 + (x^T Sigma^-1 x)^beta) (Real-ESRGAN's plateau kernel)."""
    form = _quadratic_form(sigma_x, sigma_y, theta, size)
    return restrict_kernel_size(1.0 / (1.0 + form ** beta[:, None, None]), _full(sigma_x, size))


def sinc_kernels(cutoff: torch.Tensor, size: int) -> torch.Tensor:
    """Circular low-pass (2D sinc) kernels with per-sample cutoff frequency in radians."""
    yy, xx = _kernel_grid(size, cutoff.device)
    radius = torch.sqrt(xx**2 + yy**2)[None]
    omega = cutoff[:, None, None]
    safe = torch.where(radius == 0, torch.ones_like(radius), radius)
    kernels = omega * torch.special.bessel_j1(omega * safe) / (2 * math.pi * safe)
    kernels = torch.where(radius == 0, omega**2 / (4 * math.pi), kernels)
    return kernels / kernels.sum(dim=(-2, -1), keepdim=True)


def gaussian_taps(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """1D Gaussian filters (N,size), normalised."""
    offsets = torch.arange(size, dtype=torch.float32, device=sigma.device) - (size - 1) / 2
    taps = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    return taps / taps.sum(dim=1, keepdim=True)


def _full(reference: torch.Tensor, size: int) -> torch.Tensor:
    return torch.full_like(reference, float(size))


def _pad(images: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    mode = "reflect" if pad_h < images.shape[-2] and pad_w < images.shape[-1] else "replicate"
    return F.pad(images, (pad_w, pad_w, pad_h, pad_h), mode=mode)


def blur(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Correlate each sample with its own odd (kh,kw) kernel; reflect padding (replicate for tiny images).

    Large kernels go through the FFT of the padded image, so the cost does not grow with the kernel size.
    """
    n, c, h, w = images.shape
    kh, kw = kernels.shape[-2:]
    padded = _pad(images, kh // 2, kw // 2)
    kernels = kernels.to(images.dtype)
    if kh * kw <= 49:
        weight = kernels.repeat_interleave(c, dim=0)[:, None]
        out = F.conv2d(padded.reshape(1, n * c, *padded.shape[-2:]), weight, groups=n * c)
        return out.reshape(n, c, h, w)
    size = (16 * math.ceil(padded.shape[-2] / 16), 16 * math.ceil(padded.shape[-1] / 16))
    spectrum = torch.fft.rfft2(padded, s=size) * torch.fft.rfft2(kernels.flip(-2, -1), s=size)[:, None]
    return torch.fft.irfft2(spectrum, s=size)[..., kh - 1 : kh - 1 + h, kw - 1 : kw - 1 + w]


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Isotropic Gaussian blur with per-sample sigma and odd kernel size (cv2.GaussianBlur's kernel)."""
    grid = int(sizes.max())
    zero = torch.zeros_like(sigma)
    return blur(images, restrict_kernel_size(torch.exp(-0.5 * _quadratic_form(sigma, sigma, zero, grid)), sizes))


# --------------------------------------------------------------------------------------------------------- resizing
# Resizes and axis-aligned filters are separable linear maps. Each is built per axis as taps (for every output pixel,
# K source indices (N, out, K) and weights (N, out, K)), a chain of them is folded into one matrix per axis and
# sample, and the image is transformed by two batched matmuls. So each sample has its own scale and mode while the
# batch stays one tensor.
Taps = tuple[torch.Tensor, torch.Tensor]


def _cubic_weights(t: torch.Tensor, a: float = -0.75) -> torch.Tensor:
    """Keys cubic convolution weights (PyTorch's bicubic, a=-0.75) for taps at offsets -1, 0, 1, 2."""
    distances = torch.stack([t + 1, t, 1 - t, 2 - t], dim=-1)
    near = ((a + 2) * distances - (a + 3)) * distances**2 + 1
    far = ((a * distances - 5 * a) * distances + 8 * a) * distances - 4 * a
    return torch.where(distances <= 1, near, far)


def interpolation_taps(positions: torch.Tensor, length: int, mode: str) -> Taps:
    """4 taps sampling a signal of `length` at continuous `positions` (N, out) (pixel centres at integers); taps
    outside the signal are clamped to the border, as F.interpolate does."""
    offsets = torch.arange(-1, 3, device=positions.device)
    if mode == "bicubic":
        base = positions.floor()
        weights = _cubic_weights(positions - base)
    elif mode == "bilinear":
        positions = positions.clamp_min(0)
        base = positions.floor()
        frac = positions - base
        weights = torch.stack([torch.zeros_like(frac), 1 - frac, frac, torch.zeros_like(frac)], dim=-1)
    elif mode == "nearest":
        base = torch.floor(positions + 0.5)
        weights = F.one_hot(torch.ones_like(base, dtype=torch.long), 4).to(positions)
    else:
        raise ValueError(f"interpolation_taps: mode {mode!r} is not 'nearest', 'bilinear' or 'bicubic'")
    return (base.long()[..., None] + offsets).clamp(0, length - 1), weights


def area_taps(start: torch.Tensor, end: torch.Tensor, length: int, count: int) -> Taps:
    """`count` taps averaging the source interval [start, end) per output (adaptive average pooling); an interval
    past the end of the signal takes the border pixel."""
    first = start.floor()
    cells = first[..., None] + torch.arange(count, device=start.device)
    overlap = (torch.minimum(end[..., None], cells + 1) - torch.maximum(start[..., None], cells)).clamp_min(0)
    overlap = torch.where(cells < length, overlap, torch.zeros_like(overlap))
    total = overlap.sum(-1, keepdim=True)
    border = F.one_hot(torch.zeros_like(first, dtype=torch.long), count).to(overlap)
    weights = torch.where(total > 0, overlap / total.clamp_min(1e-12), border)
    return cells.long().clamp(0, length - 1), weights


def resample_taps(length_in: int, length_out: int, ratio: torch.Tensor, modes: torch.Tensor) -> Taps:
    """Output pixel i reads source [i*ratio, (i+1)*ratio) ('area') or samples it at (i+0.5)*ratio-0.5 ('bilinear',
    'bicubic'); `ratio` (N,) is input/output length, `modes` (N,) indexes RESIZE_MODES."""
    i = torch.arange(length_out, dtype=torch.float32, device=ratio.device)[None]
    ratio = ratio.float()[:, None]
    centres = (i + 0.5) * ratio - 0.5
    count = max(4, int(math.ceil(float(ratio.max()))) + 1)
    area_index, area_weight = area_taps(i * ratio, (i + 1) * ratio, length_in, count)
    pad = (0, count - 4)
    bilinear_index, bilinear_weight = (F.pad(t, pad) for t in interpolation_taps(centres, length_in, "bilinear"))
    bicubic_index, bicubic_weight = (F.pad(t, pad) for t in interpolation_taps(centres, length_in, "bicubic"))
    modes = modes[:, None, None]
    index = torch.where(modes == 0, area_index, torch.where(modes == 1, bilinear_index, bicubic_index))
    weight = torch.where(modes == 0, area_weight, torch.where(modes == 1, bilinear_weight, bicubic_weight))
    return index, weight


def filter_taps(taps: torch.Tensor, length: int) -> Taps:
    """Correlation with per-sample odd 1D `taps` (N, k) over a signal of `length`, reflect-101 border."""
    n, k = taps.shape
    source = torch.arange(length, device=taps.device)[:, None] + torch.arange(k, device=taps.device) - k // 2
    period = max(2 * (length - 1), 1)
    source = source.remainder(period)
    source = torch.where(source >= length, period - source, source).clamp(0, length - 1)
    return source.expand(n, length, k), taps[:, None, :].expand(n, length, k)


def taps_matrix(taps: Taps, length: int) -> torch.Tensor:
    """Dense (N, out, length) matrix of taps."""
    index, weight = taps
    n, out_len, count = index.shape
    matrix = weight.new_zeros(n, out_len, length)
    return matrix.scatter_add_(-1, index, weight.contiguous())


def apply_separable(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """rows (N, H', H) @ images (N, C, H, W) @ cols (N, W', W)^T."""
    return rows.to(images)[:, None] @ images @ cols.to(images).transpose(1, 2)[:, None]


def resize_to(images: torch.Tensor, size: tuple[int, int], modes: torch.Tensor) -> torch.Tensor:
    """Resize every sample to (H, W) with its own mode (index into RESIZE_MODES); equals F.interpolate for
    'area' at integer ratios and for 'bilinear'/'bicubic' (align_corners=False, no antialias)."""
    n, _, height, width = images.shape
    ratio = lambda length, out: torch.full((n,), length / out, device=images.device)  # noqa: E731
    rows = taps_matrix(resample_taps(height, size[0], ratio(height, size[0]), modes), height)
    cols = taps_matrix(resample_taps(width, size[1], ratio(width, size[1]), modes), width)
    return apply_separable(images, rows, cols)


def round_trip_matrix(length: int, scale: torch.Tensor, modes: torch.Tensor) -> torch.Tensor:
    """(N, length, length): resample to `scale` times the length and back, on a fixed-size canvas."""
    up = taps_matrix(resample_taps(length, length, scale, modes), length)
    return up @ taps_matrix(resample_taps(length, length, 1 / scale, modes), length)


def rescale_round_trip(images: torch.Tensor, scale: torch.Tensor, modes: torch.Tensor) -> torch.Tensor:
    """Resize each sample by its own `scale` (and mode) and back on a fixed-size canvas: the detail a real resize
    by `scale` removes is removed, while the batch stays one tensor."""
    _, _, height, width = images.shape
    return apply_separable(images, round_trip_matrix(height, scale, modes), round_trip_matrix(width, scale, modes))


# --------------------------------------------------------------------------------------------------------- noise
def _luma(images: torch.Tensor) -> torch.Tensor:
    return (0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3])


def gaussian_noise(images: torch.Tensor, sigma: torch.Tensor, gray: torch.Tensor, rng: SampleRNG, name: str = "gauss"):
    """Add N(0, sigma^2) noise (sigma in [0,1] units); `gray` samples share one noise map over channels."""
    n, c, h, w = images.shape
    noise = rng.normal(name, c, h, w).to(images)
    noise = torch.where(gray[:, None, None, None], noise[:, :1].expand_as(noise), noise)
    return images + sigma.to(images)[:, None, None, None] * noise


def poisson_sample(rate: torch.Tensor, uniform: torch.Tensor, normal: torch.Tensor, exact_below: float = 16.0):
    """Poisson draws from given uniforms/normals: inverse CDF for small rates, rounded N(rate, rate) above."""
    approx = torch.round(rate + rate.clamp_min(0).sqrt() * normal).clamp_min(0)
    small = rate < exact_below
    if not bool(small.any()):
        return approx
    lam, u = rate[small].clamp_min(0), uniform[small]
    prob = torch.exp(-lam)
    cdf = prob.clone()
    count = torch.zeros_like(lam)
    for k in range(1, int(exact_below * 4) + 1):
        below = u > cdf
        count = count + below.to(count.dtype)
        prob = prob * lam / k
        cdf = cdf + prob
    exact = approx.clone()
    exact[small] = count
    return exact


def poisson_noise(images: torch.Tensor, scale: torch.Tensor, gray: torch.Tensor, rng: SampleRNG, name: str = "poisson"):
    """BasicSR-style Poisson noise: levels = 2^ceil(log2(#distinct 8-bit values)); noise scaled by `scale`."""
    n, c, h, w = images.shape
    quantized = (images.clamp(0, 1) * 255).round().long().reshape(n, -1)
    histogram = torch.zeros(n, 256, device=images.device).scatter_add_(1, quantized, torch.ones_like(quantized, dtype=torch.float32))
    levels = torch.exp2(torch.ceil(torch.log2((histogram > 0).sum(1).float().clamp_min(1))))[:, None, None, None]
    source = torch.where(gray[:, None, None, None], _luma(images).expand_as(images), images).clamp(0, 1)
    rate = source * levels
    noisy = poisson_sample(rate, rng.uniform(name + "/u", c, h, w).to(images), rng.normal(name + "/n", c, h, w).to(images))
    noise = noisy / levels - source
    noise = torch.where(gray[:, None, None, None], noise[:, :1].expand_as(noise), noise)
    return images + scale.to(images)[:, None, None, None] * noise


def jpeg(images: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Differentiable JPEG (kornia) with per-sample quality in [1, 100]."""
    return jpeg_codec_differentiable(images.clamp(0, 1), quality.to(images))


def unsharp_mask(images: torch.Tensor, sigma: torch.Tensor, sizes: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """out = I + gain * (I - GaussianBlur(I)) (no clipping)."""
    return images + gain.to(images)[:, None, None, None] * (images - gaussian_blur(images, sigma, sizes))


def bilateral_filter(images: torch.Tensor, diameter: int, sigma_color: torch.Tensor, sigma_space: torch.Tensor):
    """cv2.bilateralFilter semantics: circular window, colour distance = L1 over channels, reflect-101 border.

    Values are in the units of `images` (cv2 uses 0..255 for uint8 images).
    """
    n, c, h, w = images.shape
    radius = diameter // 2
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
               if dy * dy + dx * dx <= radius * radius]
    padded = F.pad(images, (radius,) * 4, mode="reflect" if radius < min(h, w) else "replicate")
    color_coeff = (-0.5 / sigma_color.to(images) ** 2)[:, None, None, None]
    space_coeff = (-0.5 / sigma_space.to(images) ** 2)[:, None, None, None]
    total = torch.zeros_like(images)
    weights = torch.zeros_like(images[:, :1])
    for dy, dx in offsets:
        neighbour = padded[:, :, radius + dy : radius + dy + h, radius + dx : radius + dx + w]
        distance = (neighbour - images).abs().sum(1, keepdim=True)
        weight = torch.exp(distance**2 * color_coeff + (dy * dy + dx * dx) * space_coeff)
        total += weight * neighbour
        weights += weight
    return total / weights


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round() / 255


def _identity_kernels(n: int, size: int, device: torch.device) -> torch.Tensor:
    kernels = torch.zeros(n, size, size, device=device)
    kernels[:, size // 2, size // 2] = 1.0
    return kernels


def _gate(apply: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(apply[:, None, None, None], new, old)


def _random_scale(rng: SampleRNG, name: str, probabilities: tuple[float, float, float], bounds: tuple[float, float]):
    """Per-sample scale: up U(1, bounds[1]) / down U(bounds[0], 1) / keep 1 with the given probabilities."""
    kind = rng.choice(name + "/kind", probabilities)
    up = rng.uniform(name + "/up", low=1.0, high=bounds[1])
    down = rng.uniform(name + "/down", low=bounds[0], high=1.0)
    return torch.where(kind == 0, up, torch.where(kind == 1, down, torch.ones_like(up)))


# --------------------------------------------------------------------------------------------------------- levels
@dataclass(frozen=True)
class DegradationLevel:
    """Parameter ranges (low, high) of the synthetic TextZoom-like LR; each sample draws its own values."""

    blur_sigma: tuple[float, float]
    anisotropic_probability: float
    rescale: tuple[float, float]
    noise_sigma: tuple[float, float]
    """Gaussian noise std in 0..255 units, added at LR size."""
    gray_noise_probability: float
    jpeg_quality: tuple[float, float]


# Calibrated so that PP-OCR (the ASTER column's stand-in) reads the bicubic-upsampled synthetic test images close to
# TextZoom's bicubic + ASTER row (67.4 / 42.4 / 31.2 %) while reading HR at ~99 %: the room SR has to win. The suite's
# fine-tuned EasyOCR readers are calibrated on these levels for the MORAN and CRNN columns (`stisr-data calibrate`).
EASY = DegradationLevel((1.7, 2.7), 0.3, (0.41, 0.61), (2.0, 6.0), 0.5, (50.0, 85.0))
MEDIUM = DegradationLevel((2.1, 3.1), 0.4, (0.36, 0.555), (4.0, 10.0), 0.4, (35.0, 70.0))
HARD = DegradationLevel((2.2, 3.0), 0.5, (0.36, 0.52), (5.0, 12.0), 0.4, (30.0, 60.0))
LEVELS = {"easy": EASY, "medium": MEDIUM, "hard": HARD}


def degrade_level(
    hr: torch.Tensor, level: DegradationLevel, seed: int, ids: torch.Tensor, scale: int = 2
) -> torch.Tensor:
    """HR (N,3,H,W) -> LR (N,3,H//scale,W//scale): blur, rescale round trip, downscale, noise, JPEG, 8-bit."""
    rng = SampleRNG(seed, ids).to(hr.device)
    n, _, height, width = hr.shape
    size = min(21, 2 * math.ceil(3 * level.blur_sigma[1]) + 1)
    sigma_x = rng.uniform("blur/sx", low=level.blur_sigma[0], high=level.blur_sigma[1])
    sigma_y = torch.where(
        rng.bernoulli("blur/aniso", level.anisotropic_probability),
        rng.uniform("blur/sy", low=level.blur_sigma[0], high=level.blur_sigma[1]),
        sigma_x,
    )
    rescale = rng.uniform("rescale", low=level.rescale[0], high=level.rescale[1])
    rescale_modes, down_modes = rng.integers("rescale/mode", 0, 2), rng.integers("down/mode", 0, 2)

    def axis_matrix(length: int, sigma: torch.Tensor) -> torch.Tensor:
        """blur -> rescale round trip -> downscale by `scale`, folded into one (N, length//scale, length) matrix."""
        matrix = taps_matrix(resample_taps(length, length // scale, torch.full_like(rescale, scale), down_modes), length)
        matrix = matrix @ taps_matrix(resample_taps(length, length, rescale, rescale_modes), length)
        matrix = matrix @ taps_matrix(resample_taps(length, length, 1 / rescale, rescale_modes), length)
        return matrix @ taps_matrix(filter_taps(gaussian_taps(sigma, size), length), length)

    images = apply_separable(hr, axis_matrix(height, sigma_y), axis_matrix(width, sigma_x))
    sigma = rng.uniform("noise", low=level.noise_sigma[0], high=level.noise_sigma[1]) / 255
    images = gaussian_noise(images, sigma, rng.bernoulli("noise/gray", level.gray_noise_probability), rng)
    images = jpeg(images, rng.uniform("jpeg", low=level.jpeg_quality[0], high=level.jpeg_quality[1]))
    return quantize_8bit(images)


# --------------------------------------------------------------------------------------------------------- Real-ESRGAN
@dataclass(frozen=True)
class RealESRGANStage:
    """One order of the Real-ESRGAN pipeline (train_realesrnet_x4plus.yml values by default: first order)."""

    blur_probability: float = 1.0
    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    kernel_probabilities: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    """iso, aniso, generalized iso, generalized aniso, plateau iso, plateau aniso."""
    sinc_probability: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    generalized_beta: tuple[float, float] = (0.5, 4.0)
    plateau_beta: tuple[float, float] = (1.0, 2.0)
    resize_probabilities: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_probability: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 30.0)
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_noise_probability: float = 0.4
    jpeg_quality: tuple[float, float] = (30.0, 95.0)


SECOND_STAGE = RealESRGANStage(
    blur_probability=0.8, blur_sigma=(0.2, 1.5), resize_probabilities=(0.3, 0.4, 0.3), resize_range=(0.3, 1.2),
    noise_sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5),
)


@dataclass(frozen=True)
class RealESRGANConfig:
    first: RealESRGANStage = RealESRGANStage()
    second: RealESRGANStage = SECOND_STAGE
    second_order_probability: float = 1.0
    final_sinc_probability: float = 0.8


def realesrgan_kernels(stage: RealESRGANStage, rng: SampleRNG, name: str) -> torch.Tensor:
    """Per-sample Real-ESRGAN kernels on a grid of the largest size (zero outside each sample's own size)."""
    grid = max(stage.kernel_sizes)
    sizes = torch.tensor(stage.kernel_sizes, device=rng.keys.device)[
        rng.integers(name + "/size", 0, len(stage.kernel_sizes) - 1)]
    kind = rng.choice(name + "/kind", stage.kernel_probabilities)
    sigma_x = rng.uniform(name + "/sx", low=stage.blur_sigma[0], high=stage.blur_sigma[1])
    isotropic = kind % 2 == 0
    sigma_y = torch.where(isotropic, sigma_x, rng.uniform(name + "/sy", low=stage.blur_sigma[0], high=stage.blur_sigma[1]))
    theta = torch.where(isotropic, torch.zeros_like(sigma_x), rng.uniform(name + "/theta", low=-math.pi, high=math.pi))
    beta_g = rng.uniform(name + "/betag", low=stage.generalized_beta[0], high=stage.generalized_beta[1])
    beta_p = rng.uniform(name + "/betap", low=stage.plateau_beta[0], high=stage.plateau_beta[1])
    family = (kind // 2)[:, None, None]
    kernels = torch.where(
        family == 0,
        gaussian_kernels(sigma_x, sigma_y, theta, grid),
        torch.where(family == 1, generalized_gaussian_kernels(sigma_x, sigma_y, theta, beta_g, grid),
                    plateau_kernels(sigma_x, sigma_y, theta, beta_p, grid)),
    )
    kernels = restrict_kernel_size(kernels, sizes)
    cutoff = torch.where(sizes < 13, rng.uniform(name + "/wc", low=math.pi / 3, high=math.pi),
                         rng.uniform(name + "/wc", low=math.pi / 5, high=math.pi))
    sinc = restrict_kernel_size(sinc_kernels(cutoff, grid), sizes)
    kernels = torch.where(rng.bernoulli(name + "/sinc", stage.sinc_probability)[:, None, None], sinc, kernels)
    identity = _identity_kernels(len(sizes), grid, sizes.device)
    return torch.where(rng.bernoulli(name + "/apply", stage.blur_probability)[:, None, None], kernels, identity)


def _realesrgan_noise(images: torch.Tensor, stage: RealESRGANStage, rng: SampleRNG, name: str) -> torch.Tensor:
    gray = rng.bernoulli(name + "/gray", stage.gray_noise_probability)
    sigma = rng.uniform(name + "/sigma", low=stage.noise_sigma[0], high=stage.noise_sigma[1]) / 255
    scale = rng.uniform(name + "/scale", low=stage.poisson_scale[0], high=stage.poisson_scale[1])
    use_gaussian = rng.bernoulli(name + "/kind", stage.gaussian_noise_probability)
    noisy = torch.where(use_gaussian[:, None, None, None],
                        gaussian_noise(images, sigma, gray, rng, name + "/g"),
                        poisson_noise(images, scale, gray, rng, name + "/p"))
    return noisy.clamp(0, 1)


def realesrgan_degradation(
    hr: torch.Tensor, seed: int, ids: torch.Tensor, scale: int = 2, config: RealESRGANConfig = RealESRGANConfig()
) -> torch.Tensor:
    """Real-ESRGAN second-order degradation, HR (N,3,H,W) -> LR (N,3,H//scale,W//scale), 8-bit values."""
    rng = SampleRNG(seed, ids).to(hr.device)
    _, _, height, width = hr.shape
    first, second = config.first, config.second
    images = blur(hr, realesrgan_kernels(first, rng, "k1"))
    images = rescale_round_trip(images, _random_scale(rng, "r1", first.resize_probabilities, first.resize_range),
                                rng.integers("r1/mode", 0, 2))
    images = _realesrgan_noise(images, first, rng, "n1")
    images = jpeg(images, rng.uniform("q1", low=first.jpeg_quality[0], high=first.jpeg_quality[1]))

    second_order = rng.bernoulli("second", config.second_order_probability)
    stage2 = blur(images, realesrgan_kernels(second, rng, "k2"))
    stage2 = rescale_round_trip(stage2, _random_scale(rng, "r2", second.resize_probabilities, second.resize_range),
                                rng.integers("r2/mode", 0, 2))
    images = _gate(second_order, stage2, images)
    images = resize_to(images, (height // scale, width // scale), rng.integers("final/mode", 0, 2))
    images = _gate(second_order, _realesrgan_noise(images, second, rng, "n2"), images)

    grid = 21
    cutoff = rng.uniform("final/wc", low=math.pi / 3, high=math.pi)
    sinc = torch.where(rng.bernoulli("final/sinc", config.final_sinc_probability)[:, None, None],
                       sinc_kernels(cutoff, grid), _identity_kernels(len(cutoff), grid, cutoff.device))
    quality = rng.uniform("q2", low=second.jpeg_quality[0], high=second.jpeg_quality[1])
    sinc_first = jpeg(blur(images, sinc), quality)
    jpeg_first = blur(jpeg(images, quality), sinc)
    return quantize_8bit(_gate(rng.bernoulli("final/order", 0.5), sinc_first, jpeg_first))


# --------------------------------------------------------------------------------------------------------- BSRGAN
BSRGAN_OPS = ("blur1", "blur2", "down2", "down3", "noise", "jpeg")


def _bsrgan_blur(images: torch.Tensor, rng: SampleRNG, name: str, scale: int) -> torch.Tensor:
    grid = 25
    sizes = 2 * rng.integers(name + "/size", 2, 11) + 3
    anisotropic = rng.bernoulli(name + "/aniso", 0.5)
    l1 = rng.uniform(name + "/l1", low=0.1, high=4.0 + scale)
    l2 = rng.uniform(name + "/l2", low=0.1, high=4.0 + scale)
    sigma_iso = rng.uniform(name + "/sigma", low=0.1, high=2.0 + 0.2 * scale)
    sigma_x = torch.where(anisotropic, l1.sqrt(), sigma_iso)
    sigma_y = torch.where(anisotropic, l2.sqrt(), sigma_iso)
    theta = torch.where(anisotropic, rng.uniform(name + "/theta", low=0.0, high=math.pi), torch.zeros_like(l1))
    return blur(images, restrict_kernel_size(gaussian_kernels(sigma_x, sigma_y, theta, grid), sizes))


def _nearest_round_trip(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest subsampling by an integer `factor` and nearest upsampling back."""
    n = len(images)

    def matrix(length: int) -> torch.Tensor:
        i = torch.arange(length, dtype=torch.float32, device=images.device).expand(n, length)
        up = taps_matrix(interpolation_taps((i + 0.5) / factor - 0.5, length, "nearest"), length)
        return up @ taps_matrix(interpolation_taps((i + 0.5) * factor - 0.5, length, "nearest"), length)

    return apply_separable(images, matrix(images.shape[-2]), matrix(images.shape[-1]))


def _bsrgan_down2(images: torch.Tensor, rng: SampleRNG, scale: int) -> torch.Tensor:
    factor = rng.uniform("down2/factor", low=1.0, high=2.0 * scale)
    resized = rescale_round_trip(images, 1 / factor, rng.integers("down2/mode", 0, 2))
    sigma = rng.uniform("down2/sigma", low=0.1, high=0.6 * scale)
    blurred = blur(images, gaussian_kernels(sigma, sigma, torch.zeros_like(sigma), 25))
    subsampled = _nearest_round_trip(blurred, scale)
    return _gate(rng.bernoulli("down2/resize", 0.75), resized, subsampled)


def _bsrgan_noise(images: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
    n, c, h, w = images.shape
    level = rng.integers("noise/level", 2, 25).to(images) / 255
    kind = rng.choice("noise/kind", (0.4, 0.4, 0.2))
    z = rng.normal("noise/z", c, h, w).to(images)
    basis, _ = torch.linalg.qr(rng.normal("noise/basis", 3, 3))
    mix = basis.transpose(1, 2) @ torch.diag_embed(rng.uniform("noise/eig", 3).sqrt())
    correlated = torch.einsum("nij,njhw->nihw", mix.to(images), z)
    noise = torch.where((kind == 0)[:, None, None, None], z,
                        torch.where((kind == 1)[:, None, None, None], z[:, :1].expand_as(z), correlated))
    return (images + level[:, None, None, None] * noise).clamp(0, 1)


def bsrgan_degradation(hr: torch.Tensor, seed: int, ids: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """BSRGAN degradation (public `degradation_bsrgan`, without the unreleased ISP model), HR -> 8-bit LR.

    Each sample runs the six ops in its own random order (down2 forced before down3); ops after down3 run at LR size.
    """
    rng = SampleRNG(seed, ids).to(hr.device)
    n, c, height, width = hr.shape
    order = torch.argsort(rng.uniform("order", len(BSRGAN_OPS)), dim=1)
    position = torch.argsort(order, dim=1)
    down2, down3 = BSRGAN_OPS.index("down2"), BSRGAN_OPS.index("down3")
    swap = position[:, down2] > position[:, down3]
    rows = swap.nonzero().squeeze(1)
    order[rows, position[rows, down2]], order[rows, position[rows, down3]] = down3, down2

    hr_canvas = hr.clone()
    lr_canvas = hr.new_zeros(n, c, height // scale, width // scale)
    moved = torch.zeros(n, dtype=torch.bool, device=hr.device)
    operations = {
        "blur1": lambda x, r: _bsrgan_blur(x, r, "blur1", scale),
        "blur2": lambda x, r: _bsrgan_blur(x, r, "blur2", scale),
        "down2": lambda x, r: _bsrgan_down2(x, r, scale),
        "noise": _bsrgan_noise,
        "jpeg": lambda x, r: _gate(r.bernoulli("jpeg/apply", 0.9), jpeg(x, r.integers("jpeg/q", 30, 95).float()), x),
    }
    for slot in range(len(BSRGAN_OPS)):
        for op_index, op_name in enumerate(BSRGAN_OPS):
            chosen = order[:, slot] == op_index
            if op_name == "down3":
                rows = chosen.nonzero().squeeze(1)
                if rows.numel():
                    modes = rng.subset(rows).to(hr.device).integers("down3/mode", 0, 2)
                    lr_canvas[rows] = resize_to(hr_canvas[rows], (height // scale, width // scale), modes)
                    moved[rows] = True
                continue
            for canvas, on_canvas in ((hr_canvas, chosen & ~moved), (lr_canvas, chosen & moved)):
                rows = on_canvas.nonzero().squeeze(1)
                if rows.numel():
                    canvas[rows] = operations[op_name](canvas[rows], rng.subset(rows).to(hr.device))
    final = jpeg(lr_canvas, rng.integers("final/jpeg", 30, 95).float())
    return quantize_8bit(final)


# --------------------------------------------------------------------------------------------------------- LEMMA STR
def lemma_str_degradation(images: torch.Tensor, seed: int, ids: torch.Tensor) -> torch.Tensor:
    """LEMMA's STR-benchmark degradation (`dataset.degradation`), same size out, 8-bit values in [0,1].

    Pre-blur (k 3|5, sigma U(5,6)); with p 0.8 shot+read noise (variance shot*I + read on 0..255, skipped when the
    image mean > 252); round; with p 0.7 Gaussian denoise (k 3|5, sigma U(2,3)) else bilateral (d 7, sigmas U(70,80));
    unsharp mask (k 3|5, sigma U(2,3), gain U(3,4)); clip and truncate to uint8 as numpy's astype does.
    """
    rng = SampleRNG(seed, ids).to(images.device)
    n, c, h, w = images.shape
    pixels = images * 255
    kernel_size = lambda name: 2 * rng.integers(name, 1, 2) + 1  # noqa: E731 - {3, 5}
    blurred = gaussian_blur(pixels, rng.uniform("pre/sigma", low=5.0, high=6.0), kernel_size("pre/k"))

    shot = rng.uniform("noise/shot", low=0.0, high=0.005)[:, None, None, None]
    read = rng.uniform("noise/read", low=0.0, high=0.015)[:, None, None, None]
    noise = torch.sqrt(shot * blurred + read) * rng.normal("noise/z", c, h, w).to(images)
    bright = blurred.mean(dim=(1, 2, 3)) > 252.0
    noisy = (blurred + torch.where(bright[:, None, None, None], torch.zeros_like(noise), noise)).clamp(0, 255)
    noisy = _gate(rng.uniform("noise/apply") > 0.2, noisy, blurred).round()

    gaussian = gaussian_blur(noisy, rng.uniform("nr/sigma", low=2.0, high=3.0), kernel_size("nr/k")).round()
    bilateral = bilateral_filter(noisy, 7, rng.uniform("nr/color", low=70.0, high=80.0),
                                 rng.uniform("nr/space", low=70.0, high=80.0)).round()
    denoised = _gate(rng.uniform("nr/choice") < 0.7, gaussian, bilateral)

    sharpened = unsharp_mask(denoised, rng.uniform("usm/sigma", low=2.0, high=3.0), kernel_size("usm/k"),
                             rng.uniform("usm/gain", low=3.0, high=4.0))
    return sharpened.clamp(0, 255).floor() / 255
