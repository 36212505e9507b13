import itertools
import math

import pytest
import torch

from stisr_lightning.diffusion.resshift import ResShiftScheduler, sample

V1_SQRT_ETAS = [0.020, 0.117, 0.176, 0.234, 0.292, 0.351, 0.412, 0.476, 0.542, 0.610, 0.681, 0.754, 0.830, 0.909, 0.990]
V3_SQRT_ETAS = [0.100, 0.520, 0.761, 0.990]


def hand_etas(total: int = 15, kappa: float = 2.0, min_noise_level: float = 0.04) -> list[float]:
    start = min(min_noise_level / kappa, min_noise_level)
    base = math.exp(math.log(0.99 / start) / (total - 1))
    return [(start * base ** ((t / (total - 1)) ** 0.3 * (total - 1))) ** 2 for t in range(total)]


def seeded(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("scheduler", "min_noise_level", "expected"),
    [(ResShiftScheduler(), 0.04, V1_SQRT_ETAS), (ResShiftScheduler.v3(), 0.2, V3_SQRT_ETAS)],
)
def test_sqrt_eta_tables(scheduler, min_noise_level, expected):
    total = len(expected)
    assert [round(value, 3) for value in scheduler.sqrt_etas.tolist()] == expected
    hand = [math.sqrt(eta) for eta in hand_etas(total, min_noise_level=min_noise_level)]
    assert scheduler.sqrt_etas.tolist() == pytest.approx(hand, rel=1e-6)
    assert scheduler.timesteps.tolist() == list(range(total - 1, -1, -1))  # every step by default


def test_add_noise_formula():
    scheduler, etas = ResShiftScheduler(), hand_etas()
    x0, y, noise = torch.tensor([[0.5, -0.25]] * 2), torch.tensor([[1.0, 0.75]] * 2), torch.tensor([[1.0, -2.0]] * 2)
    noisy = scheduler.add_noise(x0, y, noise, torch.tensor([0, 14]))
    for row, eta in zip(noisy, (etas[0], etas[14])):
        expected = [a + eta * (b - a) + 2.0 * math.sqrt(eta) * n for a, b, n in ((0.5, 1.0, 1.0), (-0.25, 0.75, -2.0))]
        assert row.tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("steps", "t", "prev"), [(15, 14, 13), (15, 5, 4), (15, 1, 0), (4, 10, 6), (4, 6, 2)])
def test_step_draws_from_the_closed_form_posterior(steps, t, prev):
    """step(x0, t, x_t, noise) = mean + std * noise of q(x_prev | x_t, x0) (Eq. 10 with the kept steps)."""
    scheduler, etas = ResShiftScheduler(), hand_etas()
    scheduler.set_timesteps(steps)
    eta, eta_prev = etas[t], etas[prev]
    mean = eta_prev / eta * 1.2 + (eta - eta_prev) / eta * 0.3
    std = math.sqrt(4.0 * eta_prev * (eta - eta_prev) / eta)
    for noise in (0.0, 1.5):
        step = scheduler.step(torch.tensor([0.3]), t, torch.tensor([1.2]), noise=torch.tensor([noise]))
        assert step.item() == pytest.approx(mean + noise * std, rel=1e-5)


@pytest.mark.parametrize(("steps", "last"), [(15, 0), (4, 2), (1, 14)])
def test_last_step_returns_x0_without_noise(steps, last):
    scheduler = ResShiftScheduler()
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps[-1].item() == last
    x0 = torch.tensor([0.3, -0.7])
    assert torch.equal(scheduler.step(x0, last, torch.tensor([5.0, 2.0]), noise=torch.full((2,), 1e3)), x0)


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("steps", [15, 4, 1])
def test_deterministic_mean_path_returns_x0(spacing, steps):
    """With x0 known and zero noise the chain stays on x0 + eta_t / eta_start (y - x0) and ends exactly at x0."""
    scheduler, etas = ResShiftScheduler(timestep_spacing=spacing), hand_etas()
    scheduler.set_timesteps(steps)
    x0, y = seeded(2, 3, 4, 8, seed=1), seeded(2, 3, 4, 8, seed=2)
    timesteps = scheduler.timesteps.tolist()
    x = scheduler.initial_sample(y, noise=torch.zeros_like(y))
    assert torch.equal(x, y)
    for t, prev in itertools.pairwise(timesteps):
        x = scheduler.step(x0, t, x, noise=torch.zeros_like(x))
        torch.testing.assert_close(x, x0 + etas[prev] / etas[timesteps[0]] * (y - x0), atol=1e-5, rtol=0)
    assert torch.equal(scheduler.step(x0, timesteps[-1], x, noise=torch.zeros_like(x)), x0)


def test_sample_loop_feeds_scaled_input_and_recovers_x0():
    scheduler = ResShiftScheduler.v3()
    x0, y = seeded(2, 3, 4, 8, seed=1), seeded(2, 3, 4, 8, seed=2)
    seen = []

    def perfect(x_in, t):
        seen.append((t.item(), x_in.std().item()))
        return x0

    assert torch.equal(sample(perfect, y, scheduler, generator=torch.Generator().manual_seed(3)), x0)
    assert [t for t, _ in seen] == [3, 2, 1, 0]
    prior = scheduler.initial_sample(y, generator=torch.Generator().manual_seed(3))
    assert seen[0][1] == pytest.approx((prior / math.sqrt(4 * 0.99**2 + 1)).std().item(), rel=1e-6)


@pytest.mark.parametrize(
    ("scheduler", "steps", "t", "prev"),
    [
        (ResShiftScheduler(), 15, 6, 5),
        (ResShiftScheduler(), 4, 10, 6),
        (ResShiftScheduler.v3(), 4, 2, 1),
    ],
)
def test_one_posterior_step_has_the_forward_marginal(scheduler, steps, t, prev):
    """x_t ~ q(x_t | x0, y) then x_prev ~ q(x_prev | x_t, x0) must be distributed as q(x_prev | x0, y) (Monte Carlo)."""
    scheduler.set_timesteps(steps)
    count, x0, y = 200_000, 0.4, -0.6
    x_t = scheduler.add_noise(torch.full((count,), x0), torch.full((count,), y), seeded(count, seed=4), torch.tensor(t))
    x_prev = scheduler.step(torch.full((count,), x0), t, x_t, noise=seeded(count, seed=5))
    eta_prev = scheduler.etas[prev].item()
    assert x_prev.mean().item() == pytest.approx(x0 + eta_prev * (y - x0), abs=0.01)
    assert x_prev.var().item() == pytest.approx(4.0 * eta_prev, rel=0.02)


def test_prior_and_its_eta():
    scheduler, noise, y = ResShiftScheduler(), seeded(3, 5, seed=6), seeded(3, 5, seed=7)
    torch.testing.assert_close(scheduler.initial_sample(y, noise), y + 2.0 * 0.99 * noise)
    drawn = scheduler.initial_sample(y, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(drawn, y + 2.0 * 0.99 * noise)
    leading = ResShiftScheduler(timestep_spacing="leading")
    leading.set_timesteps(4)
    assert leading.timesteps.tolist() == [11, 7, 3, 0]  # official space_timesteps(15, 4)
    torch.testing.assert_close(leading.initial_sample(y, noise), y + 2.0 * math.sqrt(hand_etas()[11]) * noise)


def test_timestep_subsets():
    scheduler = ResShiftScheduler()
    for steps, expected in ((4, [14, 10, 6, 2]), (5, [14, 11, 8, 5, 2]), (1, [14])):
        scheduler.set_timesteps(steps)
        assert scheduler.timesteps.tolist() == expected


def test_per_sample_timesteps_match_scalar_calls():
    scheduler = ResShiftScheduler()
    x0, x_t, noise = seeded(3, 2, 4, seed=8), seeded(3, 2, 4, seed=9), seeded(3, 2, 4, seed=10)
    t = torch.tensor([14, 3, 0])
    batched = scheduler.step(x0, t, x_t, noise=noise)
    for i, ti in enumerate(t.tolist()):
        alone = scheduler.step(x0[i : i + 1], ti, x_t[i : i + 1], noise=noise[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], alone)


def test_scale_input_formula():
    scheduler, etas, x = ResShiftScheduler(), hand_etas(), seeded(2, 3, seed=11)
    scaled = scheduler.scale_input(x, torch.tensor([0, 9]))
    for row, source, eta in zip(scaled, x, (etas[0], etas[9])):
        torch.testing.assert_close(row, source / math.sqrt(4.0 * eta + 1))


@pytest.mark.parametrize(
    ("kwargs", "value"),
    [
        ({"num_train_timesteps": 1}, "got 1"),
        ({"kappa": 0.0}, "got 0.0"),
        ({"power": -0.3}, "got -0.3"),
        ({"etas_end": 1.5}, "etas_end=1.5"),
        ({"min_noise_level": 0.0}, "min_noise_level=0.0"),
        ({"min_noise_level": 4.0}, "min_noise_level=4.0"),
        ({"timestep_spacing": "linspace"}, "'linspace'"),
    ],
)
def test_invalid_arguments_raise_one_line(kwargs, value):
    with pytest.raises(ValueError, match=f"resshift: .*{value}") as error:
        ResShiftScheduler(**kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("steps", [0, 16])
def test_invalid_inference_steps(steps):
    with pytest.raises(ValueError, match=f"num_inference_steps must be in 1..15, got {steps}$"):
        ResShiftScheduler().set_timesteps(steps)
