import json
import math
import re
from functools import partial
from pathlib import Path

import pytest
import torch

from fakes import OFFICIAL_CHECKPOINTS, random_official_state
from stisr_lightning.losses.mix import LossMix
from stisr_lightning.losses.pixel import GradientPriorLoss, PixelMSE
from stisr_lightning.losses.tatt import (
    TPDistillationLoss,
    TSSIMLoss,
    rotate_images,
    sample_rotations,
    tri_ssim,
)
from stisr_lightning.models.blocks.text_prior import TPGenerator, TPInterpreter
from stisr_lightning.models.generators.tatt import TATT, load_official_tatt
from stisr_lightning.systems.tatt import TATTSystem

TATT_JSON = json.loads((OFFICIAL_CHECKPOINTS / "tatt.json").read_text())
CRNN_JSON = json.loads((OFFICIAL_CHECKPOINTS / "crnn.json").read_text())
DECODER_UNUSED = 2 * ((192 * 64 + 192 + 64 * 64 + 64) + 2 * 64)  # self_attn + norm1 of both decoder layers
FC_FEATURE_IN = 64 * 64 + 64


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The RNN-heavy models are latency-bound; one intra-op thread avoids oversubscribing the shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tp_generator_gives_probabilities_and_loads_official_crnn_layout(tmp_path):
    state = random_official_state("crnn", seed=1, scale=0.05)
    torch.save(state, tmp_path / "recognizer_best_acc_0.pth")
    tpg = TPGenerator()
    tpg.load_crnn_weights(tmp_path / "recognizer_best_acc_0.pth")
    assert torch.equal(tpg.crnn.state_dict()["rnn.1.embedding.weight"], state["rnn.1.embedding.weight"])
    tpg.eval()
    images = torch.rand(2, 4, 16, 64)
    tp = tpg(images)
    assert tp.shape == (2, 37, 1, 26)
    torch.testing.assert_close(tp.sum(1), torch.ones(2, 1, 26))
    logits = tpg.crnn(images[:, :3]).logits  # (N, T, C)
    torch.testing.assert_close(tp[1, :, 0, 5], logits[1, 5].softmax(-1))
    with pytest.raises(ValueError, match="missing"):
        torch.save({"cnn.conv0.weight": state["cnn.conv0.weight"]}, tmp_path / "partial.pth")
        tpg.load_crnn_weights(tmp_path / "partial.pth")


def test_tatt_matches_official_layout_and_parameter_count():
    model = TATT()
    official = {key: tuple(shape) for key, shape, _ in TATT_JSON["keys"] if not re.fullmatch(TATT.unused_official_keys, key)}
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items() if not key.startswith("tpg.")}
    assert ours == official
    # dropped: decoder self_attn (4 tensors) + norm1 (2) in both layers, and fc_feature_in (2)
    assert len(TATT_JSON["keys"]) - len(official) == 2 * 6 + 2
    sr_params = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("tpg."))
    assert sr_params == TATT_JSON["num_parameters"] - DECODER_UNUSED - FC_FEATURE_IN
    assert sum(p.numel() for p in model.tpg.parameters()) == CRNN_JSON["num_parameters"]


def test_load_official_tatt_with_prefix_unused_keys_and_separate_student(tmp_path):
    state = random_official_state("tatt", seed=2, scale=0.05)
    torch.save({"state_dict_G": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "model_best_acc_0.pth")
    crnn_state = random_official_state("crnn", seed=3, scale=0.05)
    torch.save(crnn_state, tmp_path / "recognizer_best_acc_0.pth")
    model = load_official_tatt(tmp_path / "model_best_acc_0.pth", tmp_path / "recognizer_best_acc_0.pth")
    loaded = model.state_dict()
    gru_key = "infoGen.transformer.gru_encoding.weight_ih_l0"
    assert torch.equal(loaded[gru_key], state[gru_key])
    assert torch.equal(loaded["tpg.crnn.cnn.conv0.weight"], crnn_state["cnn.conv0.weight"])
    assert model.infoGen.transformer.query_gru_over_batch and model.infoGen.transformer.double_encoder_input
    model.eval()
    assert model(torch.rand(2, 4, 16, 64)).shape == (2, 4, 32, 128)
    del state["block3.gru1.conv1.bias"]
    with pytest.raises(ValueError, match="block3.gru1.conv1.bias"):
        load_official_tatt({"state_dict_G": state})
    with pytest.raises(ValueError, match="not a TATT"):
        load_official_tatt({"state_dict_G": {"block1.0.weight": torch.zeros(64, 4, 9, 9)}})


def test_tatt_shapes_stn_only_in_training_and_tp_detached():
    torch.manual_seed(0)
    model = TATT(num_blocks=2)
    lr = torch.rand(3, 4, 16, 64)
    sr, tp = model.forward_with_prior(lr)
    assert sr.shape == (3, 4, 32, 128) and tp.shape == (3, 37, 1, 26)
    sr.sum().backward()
    assert all(p.grad is None for p in model.tpg.parameters())  # the SR path never reaches the student TPG
    assert model.stn_head.stn_fc2.bias.grad is not None
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(lr), model.reconstruct(lr, model.text_prior(lr)))
    with pytest.raises(ValueError, match="LR input must be"):
        model(torch.rand(1, 4, 32, 128))


def interpreter_pair(**flags) -> tuple[TPInterpreter, TPInterpreter]:
    torch.manual_seed(0)
    paper = TPInterpreter().eval()
    other = TPInterpreter(**flags).eval()
    other.load_state_dict(paper.state_dict())
    return paper, other


def test_query_gru_over_batch_makes_a_sample_depend_on_its_batch():
    paper, official = interpreter_pair(query_gru_over_batch=True)
    tp = torch.rand(3, 37, 1, 26).softmax(1)
    features = torch.randn(3, 64, 16, 64)
    with torch.no_grad():
        full, weights = paper(tp, features)
        alone, _ = paper(tp[:1], features[:1])
        quirk_full, _ = official(tp, features)
        quirk_alone, _ = official(tp[:1], features[:1])
    assert full.shape == (3, 64, 16, 64) and weights.shape == (3, 1024, 26)
    torch.testing.assert_close(full[:1], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 1024))
    assert (quirk_full[:1] - quirk_alone).abs().max() > 1e-3
    # Even alone the two differ: the quirk runs 64 one-step sequences instead of one 64-step sequence.
    assert (quirk_alone - alone).abs().max() > 1e-3


def test_double_encoder_input_equals_doubling_the_projected_prior():
    paper, official = interpreter_pair(double_encoder_input=True)
    tp = torch.rand(2, 37, 1, 26).softmax(1)
    features = torch.randn(2, 64, 16, 64)
    with torch.no_grad():
        doubled, _ = official(tp, features)
        plain, _ = paper(tp, features)
        # PReLU is positively homogeneous, so doubling fc_in doubles the encoder input of the paper variant.
        paper.fc_in.weight.mul_(2)
        paper.fc_in.bias.mul_(2)
        by_hand, _ = paper(tp, features)
    torch.testing.assert_close(doubled, by_hand, rtol=1e-5, atol=1e-5)
    assert (doubled - plain).abs().max() > 1e-4  # small: the post-norm encoder removes most of the scale


def test_distillation_loss_equals_hand_computation():
    tp_lr = torch.tensor([0.25, 0.75]).view(1, 2, 1, 1)
    tp_hr = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)
    l1 = (0.25 + 0.25) / 2
    kl = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)) / 2
    value = TPDistillationLoss()({"tp_lr": tp_lr, "tp_hr": tp_hr}, {})
    assert value.item() == pytest.approx(l1 + kl, rel=1e-6)
    assert TPDistillationLoss()({"tp_lr": tp_hr, "tp_hr": tp_hr}, {}).item() == pytest.approx(0.0, abs=1e-7)


def test_tri_ssim_is_one_on_identical_images_and_lower_otherwise():
    torch.manual_seed(0)
    x = torch.rand(2, 4, 32, 128)
    assert tri_ssim(x, x, x).item() == pytest.approx(1.0, abs=1e-6)
    assert tri_ssim(x, x, torch.rand_like(x)).item() < 0.9
    loss = TSSIMLoss()({"sr_rerotated": x, "sr_rotated": x, "hr_rotated": x}, {})
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(KeyError, match="rotate_degrees"):
        TSSIMLoss()({"sr": x}, {})


def test_rotation_identity_quarter_turn_and_seeded_draws():
    image = torch.rand(2, 4, 16, 64)
    torch.testing.assert_close(rotate_images(image, torch.zeros(2), 0.25), image, rtol=0, atol=1e-5)
    square = torch.arange(16.0).view(1, 1, 4, 4)
    quarter = rotate_images(square, torch.tensor([math.pi / 2]), 1.0)
    torch.testing.assert_close(quarter, torch.rot90(square, -1, (2, 3)), rtol=0, atol=1e-5)
    first = sample_rotations(64, 5.0, 0.25, 0.2, torch.Generator().manual_seed(7))
    second = sample_rotations(64, 5.0, 0.25, 0.2, torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    angles, ratios = first
    assert angles.abs().max() <= math.radians(5.0) and (ratios - 0.25).abs().max() <= 0.2


def tatt_system(rotate_degrees: float = 5.0) -> TATTSystem:
    terms = {"mse": PixelMSE(), "gradient_prior": GradientPriorLoss(), "distill": TPDistillationLoss(),
             "tssim": TSSIMLoss()}
    loss = LossMix(terms, {"mse": 1.0, "gradient_prior": 1e-4, "distill": 1.0, "tssim": 0.1}, scale=100.0)
    generator = TATT(num_blocks=1, use_stn=False)
    return TATTSystem(generator, loss, rotate_degrees=rotate_degrees, rotation_seed=0,
                      optimizer=partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.999)))


def test_system_training_reduces_loss_and_clips_only_the_sr_network():
    torch.manual_seed(0)
    system = tatt_system()
    batch = {"lr": torch.rand(2, 4, 16, 64), "hr": torch.rand(2, 4, 32, 128), "label": ["ab", "cd"]}
    optimizer = system.configure_optimizers()
    system.train()
    assert not system.teacher_tpg.crnn.training  # the frozen teacher stays in eval mode (BN statistics fixed)
    losses = []
    for _ in range(3):
        outputs = system.forward_train(batch)
        assert set(outputs) == {"sr", "tp_lr", "tp_hr", "sr_rotated", "sr_rerotated", "hr_rotated"}
        total, terms = system.loss(outputs, batch)
        optimizer.zero_grad()
        total.backward()
        system.configure_gradient_clipping(optimizer, 0.25, "norm")
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in system.teacher_tpg.parameters())
    sr_norm = torch.cat([p.grad.flatten() for n, p in system.generator.named_parameters()
                         if not n.startswith("tpg.") and p.grad is not None]).norm()
    tpg_norm = torch.cat([p.grad.flatten() for p in system.generator.tpg.parameters()]).norm()
    assert sr_norm <= 0.25 + 1e-4 and tpg_norm > 0
    with torch.no_grad():
        assert set(tatt_system(rotate_degrees=0.0).forward_train(batch)) == {"sr", "tp_lr", "tp_hr"}


def test_teacher_and_student_start_from_one_file_and_teacher_stays_out_of_checkpoints(tmp_path):
    torch.save(random_official_state("crnn", seed=4, scale=0.05), tmp_path / "crnn.pth")
    generator = TATT(num_blocks=1, use_stn=False)
    system = TATTSystem(generator, None, teacher_weights=str(tmp_path / "crnn.pth"))
    teacher, student = system.teacher_tpg.crnn.state_dict(), generator.tpg.crnn.state_dict()
    assert all(torch.equal(teacher[k], student[k]) for k in teacher)
    assert system.teacher_tpg.crnn.frozen and not generator.tpg.crnn.frozen
    checkpoint = {"state_dict": system.state_dict()}
    system.on_save_checkpoint(checkpoint)
    assert not any(k.startswith("teacher_tpg.") for k in checkpoint["state_dict"])
    assert any(k.startswith("generator.tpg.crnn.") for k in checkpoint["state_dict"])


def test_experiment_config_builds_the_tatt_recipe():
    import yaml
    from jsonargparse import ArgumentParser

    config = yaml.safe_load(Path("experiments/tatt.yaml").read_text())["model"]
    config["init_args"]["recognizers"] = {}
    parser = ArgumentParser()
    parser.add_argument("--model", type=TATTSystem)
    system = parser.instantiate_classes(parser.parse_object({"model": config})).model
    assert isinstance(system, TATTSystem) and isinstance(system.generator, TATT)
    assert system.loss.scale == 100.0
    assert system.loss.weights == {"mse": 1.0, "gradient_prior": 1e-4, "distill": 1.0, "tssim": 0.1}
    assert system.rotate_degrees == 5.0
    adam = system.configure_optimizers()
    assert type(adam) is torch.optim.Adam and adam.defaults["lr"] == 1e-3 and adam.defaults["betas"] == (0.5, 0.999)


def test_bench_refuses_a_compile_target_that_the_training_step_never_calls():
    """TATT's step calls generator.forward_with_prior, so compiling the module's __call__ compiles nothing."""
    from stisr_lightning.cli.bench import main

    with pytest.raises(SystemExit, match="tatt: no graph was compiled; the step does not call generator "):
        main(["train", "--experiments", "tatt", "--batch-size", "2", "--device", "cpu", "--compile", "generator"])
