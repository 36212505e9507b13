"""TextSR: generator and discriminator shapes, the TPL and adversarial terms on hand-computed inputs, the three TPL
schemes and the alternating GAN step through Lightning."""

import math
from functools import partial

import pytest
import torch
from lightning.pytorch import Trainer

from stisr_lightning.data.datamodule import STISRDataModule
from stisr_lightning.losses.mix import LossMix
from stisr_lightning.losses.pixel import PixelMSE
from stisr_lightning.losses.recognition import AdversarialLoss, TextPerceptualLoss
from stisr_lightning.models.recognizers.objectives import sequence_nll
from stisr_lightning.models.discriminators.srgan import SRGANDiscriminator
from stisr_lightning.models.generators.textsr import TextSRGenerator
from stisr_lightning.models.recognizers.aster import ASTER
from stisr_lightning.systems.textsr import TextSRSystem


def test_generator_upsamples_with_one_deconvolution_per_factor_two_and_gaussian_init():
    torch.manual_seed(0)
    generator = TextSRGenerator(scale_factor=4, num_blocks=16)
    assert generator(torch.rand(2, 3, 8, 32)).shape == (2, 3, 32, 128)
    assert generator(torch.rand(1, 3, 5, 20)).shape == (1, 3, 20, 80)  # Table 1's smallest input
    deconvs = [m for m in generator.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(deconvs) == 2 and all(m.stride == (2, 2) for m in deconvs)
    assert len([m for m in TextSRGenerator(scale_factor=2).modules() if isinstance(m, torch.nn.ConvTranspose2d)]) == 1
    head = generator.head[0]
    assert abs(head.weight.std().item() - 0.02) < 0.001 and head.bias.abs().max() == 0
    assert len(generator.blocks) == 16
    with pytest.raises(ValueError, match="textsr: scale_factor must be a power of 2, got 3"):
        TextSRGenerator(scale_factor=3)


def test_discriminator_returns_one_logit_per_image_at_any_size():
    discriminator = SRGANDiscriminator()
    convs = [m for m in discriminator.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [c.stride[0] for c in convs] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert discriminator(torch.rand(3, 3, 32, 128)).shape == (3,)
    assert discriminator(torch.rand(2, 3, 20, 80)).shape == (2,)


def test_sequence_nll_sums_each_word_then_averages_words_or_tokens():
    logits = torch.log(torch.tensor([
        [[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]],
        [[0.25, 0.25, 0.5], [0.5, 0.25, 0.25], [0.9, 0.05, 0.05]],
    ]))
    targets = torch.tensor([[0, 1, 2], [2, 0, 1]])
    lengths = torch.tensor([2, 3])  # the first word's third step is padding
    word_one = -(math.log(0.5) + math.log(0.8))
    word_two = -(math.log(0.5) + math.log(0.5) + math.log(0.05))
    assert sequence_nll(logits, targets, lengths).item() == pytest.approx((word_one + word_two) / 2, rel=1e-5)
    assert sequence_nll(logits, targets, lengths, average="token").item() == pytest.approx((word_one + word_two) / 5, rel=1e-5)
    outputs = {"tpl_logits": logits, "tpl_targets": targets, "tpl_lengths": lengths}
    assert TextPerceptualLoss()(outputs, {}).item() == pytest.approx((word_one + word_two) / 2, rel=1e-5)


def test_adversarial_loss_is_minus_log_d_of_the_sr_images():
    fake_logits = torch.tensor([0.0, math.log(3.0)])  # D = 1/2 and 3/4
    expected = (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    assert AdversarialLoss()({"fake_logits": fake_logits}, {}).item() == pytest.approx(expected, rel=1e-6)


def _system(tpl_scheme="frozen", tpl=True, **kwargs):
    torch.manual_seed(0)
    terms = {"content": PixelMSE(), "adversarial": AdversarialLoss()}
    if tpl:
        terms["tpl"] = TextPerceptualLoss()
    return TextSRSystem(
        generator=TextSRGenerator(scale_factor=2, num_blocks=1, channels=16),
        discriminator=SRGANDiscriminator(channels=8),
        tpl_recognizer="aster" if tpl else None,
        tpl_scheme=tpl_scheme,
        loss=LossMix(terms),
        recognizers={"aster": ASTER(beam_width=1, max_len=6)},
        **kwargs,
    )


def _fit(system, data_root, tmp_path, steps=2):
    data = STISRDataModule([str(data_root / "train")], {"synthetic/easy": str(data_root / "test" / "easy")},
                           val_fraction=0.1, batch_size=2, eval_batch_size=2, num_workers=0)
    trainer = Trainer(max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      accelerator="cpu", use_distributed_sampler=False)
    trainer.fit(system, datamodule=data)
    return trainer


def _snapshot(module):
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _changed(before, module):
    return any(not torch.equal(before[name], value) for name, value in module.state_dict().items()
               if value.dtype.is_floating_point and "running" not in name)


@pytest.mark.parametrize("scheme", ["frozen", "joint_scratch"])
def test_each_step_updates_discriminator_and_generator_and_counts_one_iteration(scheme, tiny_textzoom, tmp_path):
    system = _system(scheme)
    before = {part: _snapshot(getattr(system, part)) for part in ("generator", "discriminator")}
    recognizer_before = _snapshot(system.recognizers["aster"])
    trainer = _fit(system, tiny_textzoom, tmp_path, steps=2)
    assert trainer.global_step == 2  # two iterations, though each steps two optimizers
    assert _changed(before["generator"], system.generator) and _changed(before["discriminator"], system.discriminator)
    assert _changed(recognizer_before, system.recognizers["aster"]) == (scheme == "joint_scratch")
    assert {"train/loss", "train/loss/discriminator", "train/loss/tpl", "train/loss/adversarial",
            "train/loss/content"} <= set(trainer.logged_metrics)


def test_tpl_trains_the_generator_to_be_read_by_the_frozen_recognizer():
    system = _system()
    system.train()
    batch = {"lr": torch.rand(2, 3, 16, 64), "hr": torch.rand(2, 3, 32, 128), "label": ["ab", "cd"]}
    optimizer = torch.optim.Adam(system.generator.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        outputs = system.forward_train(batch)
        loss = TextPerceptualLoss()(outputs, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.02  # a random recognizer is barely sensitive to its input; it still moves
    assert all(p.grad is None for p in system.recognizers["aster"].parameters())


def test_generator_and_discriminator_each_get_the_optimizer_and_a_schedule_stepped_every_iteration(tiny_textzoom,
                                                                                                    tmp_path):
    system = _system("pretrain_joint", optimizer=partial(torch.optim.Adadelta, lr=1.0),
                     lr_scheduler=partial(torch.optim.lr_scheduler.MultiStepLR, milestones=[1], gamma=0.1),
                     recognizer_lr=0.5, generator_group_lrs={"head": 0.25})
    (generator_opt, discriminator_opt), schedulers = system.configure_optimizers()
    assert type(generator_opt) is type(discriminator_opt) is torch.optim.Adadelta
    assert [group["lr"] for group in generator_opt.param_groups] == [1.0, 0.25, 0.5]  # rest, head, ASTER
    assert {id(p) for p in discriminator_opt.param_groups[0]["params"]} == {id(p) for p in system.discriminator.parameters()}
    _fit(system, tiny_textzoom, tmp_path, steps=2)
    assert [[group["lr"] for group in opt.param_groups] for opt in system.trainer.optimizers] == \
        [[0.1, 0.025, 0.05], [0.1]]  # milestone 1 passed: every rate x0.1


def test_srgan_row_needs_no_recognizer_and_schemes_are_checked(tmp_path):
    srgan = _system(tpl=False)
    outputs = srgan.forward_train({"lr": torch.rand(2, 3, 16, 64), "label": ["a", "b"]})
    assert set(outputs) == {"sr", "fake_logits"}
    assert _system("pretrain_joint").fine_tune_recognizers == ["aster"]
    torch.save(ASTER().state_dict(), tmp_path / "aster.pth")
    with pytest.raises(ValueError, match="joint_scratch' trains 'aster' from random initialization"):
        _system("joint_scratch", recognizer_weights={"aster": str(tmp_path / "aster.pth")})
    with pytest.raises(ValueError, match="tpl_scheme: expected one of"):
        _system("sometimes")
    with pytest.raises(ValueError, match="tpl_recognizer: 'crnn' must name a configured attention recognizer"):
        TextSRSystem(TextSRGenerator(scale_factor=2, num_blocks=1), SRGANDiscriminator(), tpl_recognizer="crnn",
                     recognizers={"aster": ASTER()})


def test_bench_times_the_whole_gan_iteration_and_the_tpl_share(monkeypatch):
    from stisr_lightning.cli import bench

    updated, iteration = [], TextSRSystem.iteration

    def spy(self, batch, generator_step, discriminator_step, backward):
        updated.append(tuple(batch["lr"].shape))
        return iteration(self, batch, generator_step, discriminator_step, backward)

    monkeypatch.setattr(TextSRSystem, "iteration", spy)
    (row,) = bench.bench_train(["textsr"], batch_size=2, device="cpu", precision="bf16-mixed")
    assert updated and set(updated) == {(2, 3, 8, 32)}  # TextSR's 4x: LR 8x32 for the 32x128 HR
    assert row["fp32 eager"] > 0 and row["bf16-mixed"] > 0
    assert row["ratio"] == row["bf16-mixed"] / row["fp32 eager"]
    assert row["share of step"].startswith("TPL (aster) ")


def test_vgg_content_loss_needs_real_weights_and_compares_features(tmp_path, monkeypatch):
    from torchvision import models

    from stisr_lightning.losses.perceptual import VGGPerceptualLoss

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match=r"no VGG19 ImageNet weights at .*hub/checkpoints/vgg19-dcbb9e9d.pth"):
        VGGPerceptualLoss()
    torch.manual_seed(0)
    weights = tmp_path / "vgg19.pth"
    torch.save(models.vgg19().state_dict(), weights)  # stands in for the ImageNet file
    loss = VGGPerceptualLoss(layer="2_2", weights=str(weights))
    assert len(loss.features) == 9 and isinstance(loss.features[-1], torch.nn.ReLU)  # up to conv2_2's ReLU
    assert len(VGGPerceptualLoss(weights=str(weights)).features) == 36  # VGG54
    hr = torch.rand(2, 3, 32, 128)
    sr = hr.clone().requires_grad_()
    assert loss({"sr": sr}, {"hr": hr}).item() == 0.0
    noisy = sr + 0.1 * torch.randn_like(sr)
    value = loss({"sr": noisy}, {"hr": hr})
    value.backward()
    normalize = lambda x: (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(  # noqa: E731
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    by_hand = torch.nn.functional.mse_loss(loss.features(normalize(noisy)) / 12.75, loss.features(normalize(hr)) / 12.75)
    assert value.item() == pytest.approx(by_hand.item(), rel=1e-5) and value.item() > 0 and sr.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.features.parameters())
    with pytest.raises(ValueError, match="layer: expected one of"):
        VGGPerceptualLoss(layer="3_3", weights=str(weights))


def test_two_process_ddp_trains_textsr_with_unused_parameter_detection(tiny_textzoom, tmp_path):
    import json

    from fakes import run_command, tiny_run_args

    result = run_command("stisr_lightning.cli.train", "fit", "--config", "experiments/textsr.yaml", *tiny_run_args(
        tiny_textzoom, tmp_path, f'--data.test_sets={{"tiny/easy": {tiny_textzoom / "test" / "easy"}}}',
        "--data.batch_size=2", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1", "--trainer.strategy=ddp_find_unused_parameters_true", "--trainer.devices=2",
        "--trainer.accelerator=cpu", "--model.init_args.generator.init_args.num_blocks=1",
        '--model.init_args.recognizers={"aster": {"class_path": "stisr_lightning.models.recognizers.aster.ASTER", '
        '"init_args": {"beam_width": 1, "max_len": 4}}}'))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["world_size"] == 2 and record["global_step"] == 2
    assert set(record["test_set_sizes"]) == {"tiny/easy"}
