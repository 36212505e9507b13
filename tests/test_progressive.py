"""Progressive data sampling (text ResShift paper): which LR source each pair uses, by training step."""

import pytest
import torch
import torch.nn.functional as F

from stisr_lightning.data.degradations import bsrgan_degradation, realesrgan_degradation
from stisr_lightning.data.progressive import ProgressiveSampling, progressive_lr


def test_the_three_stages_and_the_ablation():
    sampling = ProgressiveSampling()
    assert sampling.probabilities(0) == sampling.probabilities(9_999) == (0.0, 1.0, 0.0)  # x0_hat only
    assert sampling.probabilities(10_000) == sampling.probabilities(19_999) == (0.5, 0.5, 0.0)  # y or x0_hat
    assert sampling.probabilities(20_000) == pytest.approx((1 / 3, 1 / 3, 1 / 3))  # y_hat joins
    assert ProgressiveSampling(final_mix=(2, 1, 1)).probabilities(400_000) == (0.5, 0.25, 0.25)
    assert ProgressiveSampling(enabled=False).probabilities(0) == (1.0, 0.0, 0.0)


def test_sources_follow_the_stage_probabilities_and_are_seeded():
    sampling, ids = ProgressiveSampling(first_stage_steps=2, second_stage_steps=3), torch.arange(6000)
    assert sampling.sources(1, ids, seed=0).unique().tolist() == [1]
    mixed = sampling.sources(3, ids, seed=0)
    assert set(mixed.unique().tolist()) == {0, 1} and abs(mixed.eq(0).float().mean().item() - 0.5) < 0.03
    final = sampling.sources(5, ids, seed=0)
    assert all(abs(final.eq(k).float().mean().item() - 1 / 3) < 0.03 for k in range(3))
    assert torch.equal(final, sampling.sources(5, ids, seed=0))
    assert not torch.equal(final, sampling.sources(6, ids, seed=0))  # every step draws anew
    assert not torch.equal(final, sampling.sources(5, ids, seed=1))


def test_lr_batch_mixes_real_and_degraded_sources_reproducibly():
    torch.manual_seed(0)
    hr, lr, ids = torch.rand(12, 3, 32, 128), torch.rand(12, 3, 16, 64), torch.arange(100, 112)
    sampling = ProgressiveSampling(first_stage_steps=0, second_stage_steps=0)
    out, sources = progressive_lr(hr, lr, 7, ids, 3, sampling, scale=2)
    assert out.shape == lr.shape and set(sources.tolist()) == {0, 1, 2}
    real, from_hr, from_lr = (sources == k for k in range(3))
    assert torch.equal(out[real], lr[real])
    step_seed = (3 << 32) | 7
    torch.testing.assert_close(out[from_hr], bsrgan_degradation(hr[from_hr], step_seed + 1, ids[from_hr], scale=2))
    torch.testing.assert_close(out[from_lr], bsrgan_degradation(lr[from_lr], step_seed + 2, ids[from_lr], scale=1))
    again, _ = progressive_lr(hr, lr, 7, ids, 3, sampling, scale=2)
    assert torch.equal(out, again)


def test_algorithm_ones_real_esrgan_pipeline_is_the_other_degradation():
    torch.manual_seed(0)
    hr, lr, ids = torch.rand(6, 3, 32, 128), torch.rand(6, 3, 16, 64), torch.arange(6)
    sampling = ProgressiveSampling(first_stage_steps=0, second_stage_steps=0, degradation="realesrgan")
    out, sources = progressive_lr(hr, lr, 2, ids, 1, sampling, scale=2)
    step_seed, from_hr, from_lr = (1 << 32) | 2, sources == 1, sources == 2
    assert from_hr.any() and from_lr.any()
    torch.testing.assert_close(out[from_hr], realesrgan_degradation(hr[from_hr], step_seed + 1, ids[from_hr], scale=2))
    torch.testing.assert_close(out[from_lr], realesrgan_degradation(lr[from_lr], step_seed + 2, ids[from_lr], scale=1))
    bsrgan, _ = progressive_lr(hr, lr, 2, ids, 1, ProgressiveSampling(first_stage_steps=0, second_stage_steps=0), 2)
    assert not torch.allclose(out[from_hr], bsrgan[from_hr])


def test_stored_resized_lr_gets_x0_hat_at_the_data_scale_resized_to_it():
    """DiffTSR-style data keeps LR at the HR size: x0_hat must still be degraded at x4, then resized, not at x1."""
    torch.manual_seed(0)
    hr, lr, ids = torch.rand(4, 3, 32, 128), torch.rand(4, 3, 32, 128), torch.arange(4)
    sampling = ProgressiveSampling(first_stage_steps=10)  # stage 1: every sample is x0_hat
    out, sources = progressive_lr(hr, lr, 0, ids, 5, sampling, scale=4)
    assert sources.tolist() == [1, 1, 1, 1] and out.shape == lr.shape
    small = bsrgan_degradation(hr, (5 << 32) + 1, ids, scale=4)
    assert small.shape[-2:] == (8, 32)
    expected = F.interpolate(small, size=(32, 128), mode="bicubic", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="scale=8"):
        progressive_lr(hr, lr, 0, ids, 5, sampling, scale=8)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="final_mix must be 3 non-negative weights"):
        ProgressiveSampling(final_mix=(1, 1))
    with pytest.raises(ValueError, match="stage lengths must be >= 0, got -1"):
        ProgressiveSampling(first_stage_steps=-1)
    with pytest.raises(ValueError, match="degradation must be one of bsrgan, realesrgan, got 'jpeg'"):
        ProgressiveSampling(degradation="jpeg")
    with pytest.raises(ValueError, match="got 4 / 4 channels"):
        progressive_lr(torch.rand(1, 4, 32, 128), torch.rand(1, 4, 16, 64), 0, torch.arange(1), 0,
                       ProgressiveSampling(), scale=2)
