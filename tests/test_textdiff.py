"""TextDiff generator (TEM + MRD sampling), system (Table 3 variants, EMA, AdamW), plug-and-play refinement, bench."""

from functools import partial

import pytest
import torch
from torch import nn

from stisr_lightning.losses.mix import LossMix
from stisr_lightning.losses.pixel import GradientPriorLoss
from stisr_lightning.losses.tatt import TPDistillationLoss
from stisr_lightning.data.image_ops import text_mask_from_gray
from stisr_lightning.losses.textdiff import (
    CoarseGradientProfileLoss,
    DiceLoss,
    LaplacianEdgeLoss,
    RecognizerActivationLoss,
    ResidualDiffusionLoss,
)
from stisr_lightning.models.generators.bicubic import Bicubic
from stisr_lightning.models.generators.refined import RefinedGenerator
from stisr_lightning.models.generators.textdiff import TextDiff
from stisr_lightning.models.recognizers.crnn import CRNN
from stisr_lightning.systems.textdiff import TextDiffSystem

TINY = dict(channels=8, num_blocks=1, tpg_hidden_size=16, unet_channels=8, channel_multipliers=(1, 2),
            attention_levels=(), dropout=0.0)


def tiny_textdiff(**overrides) -> TextDiff:
    torch.manual_seed(0)
    return TextDiff(**{**TINY, **overrides})


def tiny_batch(size: int = 2) -> dict:
    generator = torch.Generator().manual_seed(1)
    hr = torch.rand(size, 3, 32, 128, generator=generator)
    return {"hr": hr, "lr": torch.nn.functional.avg_pool2d(hr, 2), "label": ["ab"] * size, "index": torch.arange(size)}


def tiny_loss(predict_noise: bool = False, dice: float = 3.0, joint: float = 5.0) -> LossMix:
    with pytest.warns(UserWarning, match="recognizer_weights"):
        joint_term = RecognizerActivationLoss(CRNN(hidden_size=16), layers=("relu0", "relu2"))
    terms = {"gradient_profile": CoarseGradientProfileLoss(), "dice": DiceLoss(), "text_prior": TPDistillationLoss(),
             "diffusion": ResidualDiffusionLoss(predict_noise), "edge": LaplacianEdgeLoss(), "joint": joint_term}
    return LossMix(terms, {"gradient_profile": 0.5, "dice": dice, "joint": joint})


class PerfectResidual(nn.Module):
    """A denoiser stub that always predicts the true residual target - x_sr (a perfect x0 predictor)."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.target = target
        self.calls = 0

    def forward(self, noisy, t, x_sr, x_mask=None):
        self.calls += 1
        return self.target - x_sr


def test_shapes_and_output_channels_follow_the_input():
    model = tiny_textdiff().eval()
    lr = torch.rand(2, 4, 16, 64)
    with torch.no_grad():
        x_sr, x_mask = model.coarse(lr)
        torch.manual_seed(0)
        sr = model(lr)
        torch.manual_seed(0)
        sr_from_rgb = model(lr[:, :3])
        assert torch.equal(model.coarse(lr[:, :3])[0], x_sr)
    assert model.scale_factor == 2
    assert x_sr.shape == sr_from_rgb.shape == (2, 3, 32, 128) and sr.shape == (2, 4, 32, 128)
    assert torch.equal(sr[:, :3], sr_from_rgb) and torch.equal(sr[:, 3:], x_mask)
    assert x_mask.shape == (2, 1, 32, 128) and 0 <= x_mask.min() and x_mask.max() <= 1
    without_mask = tiny_textdiff(mask_branch=False).eval()
    assert without_mask.coarse(lr)[1] is None and without_mask.denoiser.mask_channels == 0
    with torch.no_grad():
        sr = without_mask(lr)
    assert torch.equal(sr[:, 3:], text_mask_from_gray(sr[:, :3]))
    with pytest.raises(ValueError, match=r"LR input must be \(16, 64\)"):
        model.coarse(torch.rand(1, 3, 8, 32))
    with pytest.raises(ValueError, match="prediction must be 'x0'"):
        TextDiff(**TINY, refiner="unet", prediction="noise")


def test_one_step_sampling_is_x_sr_plus_the_x0_prediction_at_the_last_timestep():
    model = tiny_textdiff().eval()
    x_sr, x_mask = torch.rand(2, 3, 32, 128), torch.rand(2, 1, 32, 128)
    with torch.no_grad():
        sr = model.refine(x_sr, x_mask, num_inference_steps=1, generator=torch.Generator().manual_seed(3))
        x_t = torch.randn(2, 3, 32, 128, generator=torch.Generator().manual_seed(3))
        expected = x_sr + model.denoiser(x_t, torch.tensor(199), x_sr, x_mask)
    torch.testing.assert_close(sr, expected)


@pytest.mark.parametrize("steps", [1, 5])
def test_sampling_shape_and_determinism_with_eta_zero(steps):
    model = tiny_textdiff().eval()
    assert model.scheduler.eta == 0.0
    x_sr, x_mask = torch.rand(2, 3, 32, 128), torch.rand(2, 1, 32, 128)

    def run(seed: int) -> torch.Tensor:
        with torch.no_grad():
            return model.refine(x_sr, x_mask, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))

    first = run(0)
    assert first.shape == (2, 3, 32, 128)
    assert torch.equal(first, run(0))
    assert not torch.equal(first, run(1))  # the seed reaches the initial x_T
    assert model.num_inference_steps == 5  # a per-call step count leaves the default alone


@pytest.mark.parametrize("steps", [1, 5, 200])
def test_perfect_x0_predictor_recovers_hr(steps):
    model = tiny_textdiff().eval()
    hr, x_sr = torch.rand(2, 3, 32, 128), torch.rand(2, 3, 32, 128)
    model.denoiser = PerfectResidual(hr)
    sr = model.refine(x_sr, None, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sr, hr, atol=1e-5, rtol=0)
    assert model.denoiser.calls == steps
    regressor = tiny_textdiff(refiner="unet").eval()
    regressor.denoiser = PerfectResidual(hr)
    torch.testing.assert_close(regressor.refine(x_sr, None), hr)
    assert regressor.denoiser.calls == 1


def test_refined_generator_feeds_the_clamped_base_output_and_the_lr_mask():
    refiner = tiny_textdiff().eval()
    hr = torch.rand(2, 3, 32, 128)
    seen = {}

    class Recording(PerfectResidual):
        def forward(self, noisy, t, x_sr, x_mask=None):
            seen["x_sr"], seen["mask"] = x_sr, x_mask
            return super().forward(noisy, t, x_sr, x_mask)

    refiner.denoiser = Recording(hr)
    lr = torch.rand(2, 4, 16, 64) * 2 - 0.5
    cascade = RefinedGenerator(Bicubic(), refiner, num_inference_steps=3).eval()
    with torch.no_grad():
        sr = cascade(lr)
        torch.testing.assert_close(seen["x_sr"], Bicubic()(lr)[:, :3].clamp(0, 1))
        torch.testing.assert_close(seen["mask"], refiner.coarse(lr)[1])
    torch.testing.assert_close(sr[:, :3], hr, atol=1e-5, rtol=0)
    assert torch.equal(sr[:, 3:], seen["mask"])  # RGB + mask input: the 4th channel is B_M's mask
    assert cascade.scale_factor == 2 and refiner.denoiser.calls == 3


VARIANTS = {
    "full": ({}, {}),
    "w/o B_M": ({"mask_branch": False}, {"dice": 0.0}),
    "NU": ({"refiner": "unet"}, {}),
    "NP": ({"prediction": "noise"}, {"predict_noise": True}),
    "w/o L_joint": ({}, {"joint": 0.0}),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_table3_variant_trains_one_finite_step(variant):
    generator_args, loss_args = VARIANTS[variant]
    system = TextDiffSystem(tiny_textdiff(**generator_args), tiny_loss(**loss_args),
                            optimizer=partial(torch.optim.AdamW, lr=1e-4, weight_decay=1e-4))
    optimizer = system.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["lr"] == 1e-4
    batch = tiny_batch()
    outputs = system.forward_train(batch)
    total, terms = system.loss(outputs, batch)
    assert torch.isfinite(total) and all(torch.isfinite(value) for value in terms.values())
    assert ("mask" in outputs) == generator_args.get("mask_branch", True)
    assert ("noise" in outputs) == (variant != "NU") and ("noise_pred" in outputs) == (variant == "NP")
    assert ("joint" in terms) == (variant != "w/o L_joint")
    torch.testing.assert_close(outputs["residual"], batch["hr"] - outputs["sr_coarse"])
    torch.testing.assert_close(outputs["sr"], outputs["sr_coarse"] + outputs["x0_pred"])
    before = [p.detach().clone() for p in system.generator.denoiser.parameters()]
    total.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, system.generator.denoiser.parameters()))
    assert system.teacher_tpg.crnn.frozen and all(p.grad is None for p in system.teacher_tpg.parameters())


def test_noise_prediction_x0_estimate_is_converted_from_eps():
    system = TextDiffSystem(tiny_textdiff(prediction="noise"), tiny_loss(predict_noise=True))
    torch.manual_seed(5)
    outputs = system.forward_train(tiny_batch())
    scheduler, t = system.generator.scheduler, outputs["timesteps"]
    # x_t = s x0 + r eps  =>  x0_hat = (x_t - r eps_hat) / s = x0 - (r / s) (eps_hat - eps).
    ratio = (scheduler.sqrt_one_minus_alphas_cumprod[t] / scheduler.sqrt_alphas_cumprod[t]).view(-1, 1, 1, 1)
    expected = outputs["residual"] - ratio * (outputs["noise_pred"] - outputs["noise"])
    torch.testing.assert_close(outputs["x0_pred"], expected, atol=1e-5, rtol=1e-4)


def test_loss_decreases_on_a_fixed_batch():
    system = TextDiffSystem(tiny_textdiff(), tiny_loss(), optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-4))
    optimizer = system.configure_optimizers()
    batch = tiny_batch()
    losses = []
    for _ in range(6):
        torch.manual_seed(0)  # the same timesteps and noise every step
        total, _ = system.loss(system.forward_train(batch), batch)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < 0.9 * losses[0]


def test_loss_terms_must_match_the_generator():
    with pytest.raises(ValueError, match="predict_noise=False but the generator predicts 'noise'"):
        TextDiffSystem(tiny_textdiff(prediction="noise"), tiny_loss())
    with pytest.raises(ValueError, match="'dice' needs B_M"):
        TextDiffSystem(tiny_textdiff(mask_branch=False), tiny_loss())


def test_ema_starts_as_a_copy_then_averages_and_serves_evaluation():
    system = TextDiffSystem(tiny_textdiff(), None, ema_decay=0.75).eval()
    lr = torch.rand(1, 3, 16, 64)
    weight = system.generator.denoiser.head[-1].weight
    averaged = system.ema.module.denoiser.head[-1].weight
    torch.manual_seed(0)
    before_any_update = system.super_resolve(lr)
    torch.manual_seed(0)
    assert torch.equal(before_any_update, system.generator(lr))  # an empty average is not used
    system.on_train_batch_end(None, None, 0)
    start = weight.detach().clone()
    torch.testing.assert_close(averaged, start)
    with torch.no_grad():
        weight.add_(1.0)
    system.on_train_batch_end(None, None, 1)
    torch.testing.assert_close(averaged, 0.75 * start + 0.25 * (start + 1.0))
    torch.manual_seed(0)
    from_ema = system.super_resolve(lr)
    torch.manual_seed(0)
    assert torch.equal(from_ema, system.ema.module(lr)) and not torch.equal(from_ema, system.generator(lr))
    assert not any(p.requires_grad for p in system.ema.parameters())


def test_coarse_gradient_profile_is_the_gradient_prior_of_x_sr():
    batch = tiny_batch()
    coarse = torch.rand_like(batch["hr"])
    expected = GradientPriorLoss()({"sr": coarse}, batch)
    torch.testing.assert_close(CoarseGradientProfileLoss()({"sr_coarse": coarse, "sr": batch["hr"]}, batch), expected)


def test_joint_loss_loads_recognizer_weights(tmp_path):
    source = CRNN(hidden_size=16)
    torch.save(source.state_dict(), tmp_path / "crnn.pth")
    term = RecognizerActivationLoss(CRNN(hidden_size=16), recognizer_weights=str(tmp_path / "crnn.pth"))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), term.recognizer.state_dict().values()))


def test_bench_sample_labels_random_init(capsys):
    from stisr_lightning.cli.bench import main

    main(["sample", "--experiment", "textdiff", "--steps", "1", "2", "--batch-size", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "TextDiff-1 sampling, random init (" in out and "TextDiff-2 sampling" in out and "s/image" in out
    assert "batch 1, 3x16x64 -> 3x32x128" in out


def test_bench_sample_refuses_a_generator_without_sampling_steps():
    from stisr_lightning.cli.bench import main

    with pytest.raises(SystemExit, match="srcnn's generator \\(SRCNN\\) has no sampling steps"):
        main(["sample", "--experiment", "srcnn", "--steps", "1", "--batch-size", "1", "--device", "cpu"])


def test_refine_with_takes_a_checkpoint_or_a_run_directory(tmp_path):
    from stisr_lightning.cli.evaluate import refiner_checkpoint

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert refiner_checkpoint(str(tmp_path / "run")) == tmp_path / "run" / "checkpoints" / "last.ckpt"
    (tmp_path / "run" / "checkpoints" / "best.ckpt").write_bytes(b"")
    assert refiner_checkpoint(str(tmp_path / "run")) == tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert refiner_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.ckpt")).name == "last.ckpt"
    with pytest.raises(FileNotFoundError, match="neither a checkpoint nor a run"):
        refiner_checkpoint(str(tmp_path / "missing"))
