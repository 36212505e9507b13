import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stisr_lightning.data import degradations as D


def _hr(n=12, seed=0):
    """Text-like images: dark bars on a light background, plus mild texture."""
    g = torch.Generator().manual_seed(seed)
    images = 0.85 + 0.1 * torch.rand(n, 3, 32, 128, generator=g)
    for i in range(n):
        for k in range(4 + i % 3):
            x = 10 + 28 * k + i
            images[i, :, 8:24, x : x + 4 + k] = 0.1
    return images


def _python_lowbias32(x):
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_int32_hash_matches_reference():
    values = [0, 1, 12345, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xDEADBEEF]
    hashed = D._hash32_(D._int32(torch.tensor(values, dtype=torch.int64)))
    assert [v & 0xFFFFFFFF for v in hashed.tolist()] == [_python_lowbias32(v) for v in values]


def test_rng_rows_depend_only_on_seed_and_id():
    full = D.SampleRNG(7, torch.tensor([3, 9, 4]))
    part = D.SampleRNG(7, torch.tensor([4, 3]))
    assert torch.equal(full.normal("z", 5)[[2, 0]], part.normal("z", 5))
    assert not torch.equal(full.uniform("a"), full.uniform("b"))
    assert not torch.equal(full.uniform("a"), D.SampleRNG(8, torch.tensor([3, 9, 4])).uniform("a"))
    u = D.SampleRNG(0, torch.arange(4000)).uniform("u")
    assert 0 < float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.02
    z = D.SampleRNG(0, torch.arange(200)).normal("n", 100)
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02


def test_gaussian_blur_matches_cv2():
    image = np.random.default_rng(0).random((20, 30, 3)).astype(np.float32)
    expected = cv2.GaussianBlur(image, (5, 5), 1.3)
    ours = D.gaussian_blur(torch.from_numpy(image).permute(2, 0, 1)[None], torch.tensor([1.3]), torch.tensor([5]))
    assert torch.allclose(ours[0].permute(1, 2, 0), torch.from_numpy(expected), atol=1e-5)


def test_large_kernel_fft_blur_matches_direct_convolution():
    images = torch.rand(2, 3, 32, 40)
    kernels = D.gaussian_kernels(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 0.5]), torch.tensor([0.3, 1.0]), 15)
    padded = F.pad(images, (7, 7, 7, 7), mode="reflect")
    direct = torch.stack([F.conv2d(padded[i : i + 1], kernels[i].expand(3, 1, 15, 15), groups=3)[0] for i in range(2)])
    assert torch.allclose(D.blur(images, kernels), direct, atol=1e-5)


def test_kernels_are_normalised_and_restricted():
    sigma = torch.tensor([1.0, 2.0])
    kernels = D.restrict_kernel_size(D.gaussian_kernels(sigma, sigma, torch.zeros(2), 21), torch.tensor([7, 21]))
    assert torch.allclose(kernels.sum((-2, -1)), torch.ones(2))
    assert kernels[0, :7].abs().sum() == 0 and kernels[0, 7:14, 7:14].sum() > 0.999
    for k in (D.sinc_kernels(torch.tensor([math.pi / 2]), 21),
              D.plateau_kernels(sigma[:1], sigma[:1] * 2, torch.ones(1), torch.tensor([1.5]), 21),
              D.generalized_gaussian_kernels(sigma[:1], sigma[:1], torch.zeros(1), torch.tensor([0.7]), 21)):
        assert torch.allclose(k.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("mode_index,mode", [(0, "area"), (1, "bilinear"), (2, "bicubic")])
def test_resize_matches_interpolate(mode_index, mode):
    images = torch.rand(3, 3, 32, 128)
    ours = D.resize_to(images, (16, 64), torch.full((3,), mode_index))
    kwargs = {} if mode == "area" else {"align_corners": False}
    assert torch.allclose(ours, F.interpolate(images, size=(16, 64), mode=mode, **kwargs), atol=1e-5)


def test_round_trip_identity_at_scale_one_and_lossy_below():
    images = _hr(3)
    modes = torch.tensor([0, 1, 2])
    assert torch.allclose(D.rescale_round_trip(images, torch.ones(3), modes), images, atol=1e-5)
    lossy = D.rescale_round_trip(images, torch.full((3,), 0.4), modes)
    assert lossy.shape == images.shape and float((lossy - images).abs().mean()) > 0.01


def test_poisson_sampler_moments():
    n = 200_000
    rng = D.SampleRNG(1, torch.arange(1))
    for rate in (3.0, 40.0):
        draws = D.poisson_sample(torch.full((1, n), rate), rng.uniform("u", n), rng.normal("z", n))
        assert abs(float(draws.mean()) - rate) < 0.05 * rate and abs(float(draws.var()) - rate) < 0.1 * rate
        assert torch.equal(draws, draws.round())


@pytest.mark.parametrize("pipeline", [
    lambda x, ids: D.degrade_level(x, D.MEDIUM, 5, ids),
    lambda x, ids: D.realesrgan_degradation(x, 5, ids),
    lambda x, ids: D.bsrgan_degradation(x, 5, ids),
])
def test_pipelines_per_sample_determinism_shapes_and_range(pipeline):
    hr = _hr(8)
    ids = torch.arange(100, 108)
    out = pipeline(hr, ids)
    assert out.shape == (8, 3, 16, 64)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out * 255, (out * 255).round())  # 8-bit values
    order = torch.tensor([5, 2, 7])
    subset = pipeline(hr[order], ids[order])
    assert torch.allclose(subset, out[order], atol=1.5 / 255)
    assert float((subset - out[order]).abs().mean()) < 1e-3
    assert not torch.equal(pipeline(hr, ids + 1000), out)


def _psnr(a, b):
    return (10 * torch.log10(1 / ((a - b) ** 2).mean(dim=(1, 2, 3)))).mean()


def test_stronger_level_gives_lower_psnr():
    hr = _hr(24, seed=3)
    ids = torch.arange(24)
    reference = F.interpolate(hr, size=(16, 64), mode="area")
    psnr = [float(_psnr(D.degrade_level(hr, level, 0, ids), reference)) for level in (D.EASY, D.MEDIUM, D.HARD)]
    assert psnr[0] > psnr[1] > psnr[2]


def test_lemma_degradation_protocol():
    hr = _hr(6)[:, :, :16, :48]
    ids = torch.arange(6)
    out = D.lemma_str_degradation(hr, 0, ids)
    assert out.shape == hr.shape
    assert torch.equal(out * 255, (out * 255).round())
    assert torch.allclose(D.lemma_str_degradation(hr[[4, 1]], 0, ids[[4, 1]]), out[[4, 1]], atol=1.5 / 255)
    assert float((out - hr).abs().mean()) > 0.02  # blur + sharpening change the image


def test_bilateral_matches_cv2_on_uint8():
    image = (np.random.default_rng(1).random((12, 20, 3)) * 255).round().astype(np.uint8)
    expected = cv2.bilateralFilter(image, 7, 75.0, 72.0).astype(np.float32)
    ours = D.bilateral_filter(torch.from_numpy(image).permute(2, 0, 1)[None].float(), 7, torch.tensor([75.0]),
                              torch.tensor([72.0]))[0].permute(1, 2, 0).round()
    assert float((ours - torch.from_numpy(expected)).abs().max()) <= 1.0
