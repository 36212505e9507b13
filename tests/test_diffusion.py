import math

import pytest
import torch

from stisr_lightning.diffusion import ResidualDiffusionScheduler, sample

T = 200


def hand_alphas_cumprod() -> list[float]:
    betas = [1e-6 + (1e-2 - 1e-6) * i / (T - 1) for i in range(T)]
    products, running = [], 1.0
    for beta in betas:
        running *= 1 - beta
        products.append(running)
    return products


def test_alpha_bar_matches_hand_computation():
    scheduler = ResidualDiffusionScheduler()
    hand = hand_alphas_cumprod()
    assert scheduler.alphas_cumprod[-1].item() == pytest.approx(hand[-1], rel=1e-6)
    assert scheduler.alphas_cumprod[-1].item() == pytest.approx(0.3666, abs=1e-4)  # x_T is not pure noise
    assert scheduler.alphas_cumprod[0].item() == pytest.approx(1 - 1e-6, rel=1e-7)


def test_add_noise_formula():
    scheduler = ResidualDiffusionScheduler()
    x0 = torch.tensor([[0.5, -0.25]]).repeat(2, 1)
    noise = torch.tensor([[1.0, 2.0]]).repeat(2, 1)
    noisy = scheduler.add_noise(x0, noise, torch.tensor([0, T - 1]))
    for row, alpha in zip(noisy, (hand_alphas_cumprod()[0], hand_alphas_cumprod()[-1])):
        expected = [math.sqrt(alpha) * a + math.sqrt(1 - alpha) * n for a, n in ((0.5, 1.0), (-0.25, 2.0))]
        assert row.tolist() == pytest.approx(expected, rel=1e-5)


def test_timestep_subsets():
    scheduler = ResidualDiffusionScheduler()
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.tolist() == [199, 159, 119, 79, 39]
    scheduler.set_timesteps(1)
    assert scheduler.timesteps.tolist() == [199]
    scheduler.set_timesteps(200)
    assert scheduler.timesteps.tolist() == list(range(199, -1, -1))
    for steps in (20, 50, 110):
        scheduler.set_timesteps(steps)
        values = scheduler.timesteps.tolist()
        assert len(values) == steps and values[0] == 199 and values == sorted(set(values), reverse=True)
    for steps in (0, 201):
        with pytest.raises(ValueError, match="num_inference_steps"):
            scheduler.set_timesteps(steps)


def test_ddim_step_matches_hand_computation():
    scheduler = ResidualDiffusionScheduler()
    scheduler.set_timesteps(5)
    alpha, alpha_prev = hand_alphas_cumprod()[199], hand_alphas_cumprod()[159]
    x0, x_t = torch.tensor([0.3]), torch.tensor([1.2])
    eps = (1.2 - math.sqrt(alpha) * 0.3) / math.sqrt(1 - alpha)
    expected = math.sqrt(alpha_prev) * 0.3 + math.sqrt(1 - alpha_prev) * eps
    assert scheduler.step(x0, 199, x_t).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("steps", [1, 5, 200])
@pytest.mark.parametrize("forward_start", [False, True])
def test_perfect_x0_predictor_recovers_x0_exactly(steps, forward_start):
    scheduler = ResidualDiffusionScheduler(start_from_forward_noise=forward_start)
    scheduler.set_timesteps(steps)
    x0 = torch.rand(2, 3, 4, 8, generator=torch.Generator().manual_seed(1)) - 0.5
    out = sample(lambda x, t: x0, x0.shape, scheduler, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out, x0)


@pytest.mark.parametrize("steps", [1, 5, 200])
def test_perfect_noise_predictor_recovers_x0(steps):
    scheduler = ResidualDiffusionScheduler(predict_noise=True)
    scheduler.set_timesteps(steps)
    x0 = torch.rand(2, 3, 4, 8, generator=torch.Generator().manual_seed(1)) - 0.5

    def true_noise(x, t):
        signal, spread = scheduler.sqrt_alphas_cumprod[t], scheduler.sqrt_one_minus_alphas_cumprod[t]
        return (x - signal * x0) / spread

    out = sample(true_noise, x0.shape, scheduler, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    assert torch.allclose(scheduler.pred_original_sample(true_noise(out + 1, 50), 50, out + 1), x0, atol=1e-5)


def test_ddpm_step_has_posterior_variance_and_is_seeded():
    scheduler = ResidualDiffusionScheduler(eta=1.0)
    scheduler.set_timesteps(T)
    t = 100
    alphas = hand_alphas_cumprod()
    beta = 1e-6 + (1e-2 - 1e-6) * t / (T - 1)
    posterior_std = math.sqrt((1 - alphas[t - 1]) / (1 - alphas[t]) * beta)
    zeros = torch.zeros(40000)
    draw = scheduler.step(zeros, t, zeros, generator=torch.Generator().manual_seed(0))
    assert draw.std().item() == pytest.approx(posterior_std, rel=0.03)
    again = scheduler.step(zeros, t, zeros, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draw, again)
    last = scheduler.step(torch.ones(3), 0, torch.zeros(3), generator=torch.Generator().manual_seed(0))
    assert torch.equal(last, torch.ones(3))  # the final step lands on x0 without noise


def test_initial_sample_default_and_forward_noised():
    shape = (2, 3, 4, 8)
    plain = ResidualDiffusionScheduler().initial_sample(shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain, torch.randn(shape, generator=torch.Generator().manual_seed(3)))
    forward = ResidualDiffusionScheduler(start_from_forward_noise=True)
    forward.set_timesteps(5)
    start = forward.initial_sample(shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(start, math.sqrt(1 - hand_alphas_cumprod()[-1]) * plain)


def test_invalid_schedule_raises():
    with pytest.raises(ValueError, match="beta_start"):
        ResidualDiffusionScheduler(beta_start=0.1, beta_end=0.01)
