import math
from pathlib import Path

import pytest
import torch
import yaml
import torch.nn.functional as F

from fakes import random_official_state
from stisr_lightning.data.charset import abinet_label_ids
from stisr_lightning.losses.recognition import PriorFineTuneCE
from stisr_lightning.models.recognizers.abinet import (
    ABINetPrior,
    ABINetRecognizer,
    ABINetVision,
    BCNLanguage,
    predicted_length,
)
from stisr_lightning.models.recognizers.prior import TextPrior

@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """On a shared, oversubscribed CPU the intra-op threads of small ops wait on each other (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(0)
    return ABINetPrior().eval()


def test_prior_outputs_follow_the_text_prior_contract(prior):
    captured = {}
    hook = prior.vision.attention.register_forward_hook(lambda m, i, out: captured.update(maps=out[1]))
    lr = torch.rand(2, 4, 16, 64, generator=torch.Generator().manual_seed(0))  # RGB + mask channel
    with torch.no_grad():
        out = prior(lr)
    hook.remove()
    assert isinstance(out, TextPrior)
    maps = captured["maps"]
    assert maps.shape == (2, 26, 8, 32)
    torch.testing.assert_close(maps.sum((2, 3)), torch.ones(2, 26))
    assert out.attention.shape == (2, 26, 16, 64)
    torch.testing.assert_close(out.attention, F.interpolate(maps, scale_factor=2, mode="bicubic", align_corners=True))
    assert out.vision_logits.shape == out.language_logits.shape == (2, 26, 37)
    assert out.lengths.dtype == torch.long and out.lengths.shape == (2,)
    assert ((out.lengths >= 2) & (out.lengths <= 26)).all()


def test_prior_rejects_a_wrong_lr_size(prior):
    with pytest.raises(ValueError, match=r"\(N, >=3, 16, 64\), got shape \(1, 3, 32, 128\)"):
        prior(torch.rand(1, 3, 32, 128))


def test_predicted_length_counts_the_end_token():
    logits = torch.full((3, 5, 37), -5.0)
    for row, ids in enumerate([[3, 5, 0, 0, 7], [0, 1, 2, 3, 4], [1, 2, 3, 4, 5]]):
        logits[row, torch.arange(5), torch.tensor(ids)] = 5.0
    assert predicted_length(logits).tolist() == [3, 1, 5]


def test_official_key_lists_load_strictly():
    for cls, name, num_parameters in ((ABINetVision, "abinet_vision", 23_547_461),
                                      (BCNLanguage, "abinet_language", 12_647_461)):
        with torch.device("meta"):  # keys, shapes and counts without paying for the initialization
            module = cls()
        state = random_official_state(name)
        assert list(module.state_dict()) == list(state)
        assert sum(p.numel() for p in module.parameters()) == num_parameters
        module.load_state_dict(state, strict=True, assign=True)
        key = next(k for k in state if k.endswith("pe"))
        assert torch.equal(module.state_dict()[key], state[key])


def test_prior_loads_official_files_and_lemma_release(tmp_path):
    vision, language = random_official_state("abinet_vision"), random_official_state("abinet_language")
    torch.save({"model": vision, "opt": {}}, tmp_path / "vision.pth")
    torch.save({"model": language}, tmp_path / "language.pth")
    prior = ABINetPrior(vision_weights=str(tmp_path / "vision.pth"), language_weights=str(tmp_path / "language.pth"))
    torch.testing.assert_close(prior.vision.cls.weight, vision["cls.weight"])
    torch.testing.assert_close(prior.language.proj.weight, language["proj.weight"])

    lemma = random_official_state("abinet_vision", prefix="position_prior.vision.")
    lemma.update(random_official_state("abinet_language", prefix="position_prior.language."))
    lemma["block1.0.weight"] = torch.zeros(64, 4, 9, 9)  # LEMMA's SR branch: not part of the prior
    torch.save({"state_dict_G": lemma, "info": {}}, tmp_path / "LEMMA-release.pth")
    prior = ABINetPrior(weights=str(tmp_path / "LEMMA-release.pth"))
    torch.testing.assert_close(prior.language.cls.bias, lemma["position_prior.language.cls.bias"])


def test_bad_files_raise_one_line_errors_naming_them(tmp_path):
    wrong_keys = tmp_path / "wrong_keys.pth"
    torch.save({"model": {"backbone.foo": torch.zeros(1)}}, wrong_keys)
    with pytest.raises(ValueError, match="wrong_keys.pth") as error:
        ABINetPrior(vision_weights=str(wrong_keys))
    assert "\n" not in str(error.value)

    state = random_official_state("abinet_language")
    state["cls.weight"] = torch.zeros(95, 512)
    wrong_shape = tmp_path / "wrong_shape.pth"
    torch.save({"model": state}, wrong_shape)
    with pytest.raises(ValueError, match=r"wrong_shape.pth: cls.weight has shape \(95, 512\)") as error:
        ABINetPrior(language_weights=str(wrong_shape))
    assert "\n" not in str(error.value)


def test_label_ids_on_fixed_strings():
    ids = abinet_label_ids(["Ab9", "a-0", "", "z1"])
    assert ids.shape == (4, 26) and ids.dtype == torch.long
    assert ids[:, :4].tolist() == [[1, 2, 35, 0], [1, 0, 36, 0], [0, 0, 0, 0], [26, 27, 0, 0]]
    assert ids[:, 4:].eq(0).all()
    assert abinet_label_ids(["abcdef"], max_length=3).tolist() == [[1, 2, 3, 0]]


def test_fine_tune_ce_equals_a_hand_computation():
    vision = torch.zeros(1, 2, 37)
    language = torch.zeros(1, 2, 37)
    language[0, 0, 1] = 2.0  # the label "a" -> ids [1, 0]
    prior = TextPrior(attention=torch.zeros(1, 2, 16, 64), vision_logits=vision, language_logits=language,
                      lengths=torch.tensor([2]))
    outputs, batch = {"sr": torch.zeros(1), "prior": prior}, {"label": ["A"]}
    expected = math.log(37) + (math.log(math.exp(2) + 36) - 2 + math.log(37)) / 2
    assert PriorFineTuneCE(max_length=1)(outputs, batch).item() == pytest.approx(expected, rel=1e-6)

    p = math.exp(2) / (math.exp(2) + 36)
    q = 1 / (math.exp(2) + 36)
    step0 = math.log(math.exp(p) + 36 * math.exp(q)) - p
    expected_double = math.log(37) + (step0 + math.log(37)) / 2
    loss = PriorFineTuneCE(official_double_softmax=True, max_length=1)(outputs, batch)
    assert loss.item() == pytest.approx(expected_double, rel=1e-6)


def test_recognizer_decodes_until_the_first_null():
    with torch.device("meta"):
        recognizer = ABINetRecognizer(use_language=False)
    logits = torch.full((2, 5, 37), -1.0)
    for row, ids in enumerate([[8, 9, 0, 1, 2], [36, 27, 35, 26, 0]]):
        logits[row, torch.arange(5), torch.tensor(ids)] = 1.0
    assert recognizer.decode(logits) == ["hi", "019z"]


def test_training_loss_decreases_on_a_fixed_batch():
    """The objective (attention, language model, CE of both heads) on a stand-in backbone: the ResNet-45 pass
    alone takes seconds per image on a shared CPU, and its gradients are plain autograd."""
    torch.manual_seed(0)
    recognizer = ABINetRecognizer()
    recognizer.vision.backbone = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((8, 32)), torch.nn.Conv2d(3, 512, 1))
    images = torch.rand(2, 3, 32, 128, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(recognizer.parameters(), lr=1e-4)
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = recognizer.training_loss(images, ["cat", "d0g"])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_recipe_saves_weights_the_prior_loads(tmp_path):
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model")
    recipe = yaml.safe_load(Path("experiments/recognizers/abinet_synth.yaml").read_text())
    system = parser.instantiate_classes(parser.parse_object({"model": recipe["model"]})).model
    assert isinstance(system.recognizer, ABINetRecognizer)
    assert system.configure_optimizers().defaults["lr"] == 1e-4
    saved = tmp_path / system.weights_name
    torch.save(system.recognizer.state_dict(), saved)  # what RecognizerSystem.on_train_end writes
    prior = ABINetPrior(weights=str(saved))
    torch.testing.assert_close(prior.vision.cls.weight, system.recognizer.vision.cls.weight)


def test_full_official_checkpoint_loads_with_or_without_alignment(tmp_path):
    full = {f"vision.{k}": v for k, v in random_official_state("abinet_vision").items()}
    full.update({f"language.{k}": v for k, v in random_official_state("abinet_language").items()})
    full.update({"alignment.w_att.weight": torch.full((512, 1024), 0.5), "alignment.w_att.bias": torch.zeros(512),
                 "alignment.cls.weight": torch.zeros(37, 512), "alignment.cls.bias": torch.zeros(37)})
    torch.save({"model": full, "opt": {}}, tmp_path / "best-train-abinet.pth")
    aligned = ABINetRecognizer.from_official_checkpoint(tmp_path / "best-train-abinet.pth", use_alignment=True)
    torch.testing.assert_close(aligned.alignment.w_att.weight, full["alignment.w_att.weight"])
    vision_only = ABINetRecognizer.from_official_checkpoint(tmp_path / "best-train-abinet.pth", use_language=False)
    assert vision_only.language is None and vision_only.alignment is None
    with torch.no_grad():
        strings = aligned.eval().read(torch.rand(2, 3, 16, 64))
    assert len(strings) == 2 and all(set(s) <= set(aligned.charset) for s in strings)


def test_recognizer_preprocessing_matches_the_prior_on_lr_and_keeps_hr_size():
    with torch.device("meta"):
        recognizer = ABINetRecognizer(use_language=False)
    lr = torch.rand(1, 4, 16, 64, generator=torch.Generator().manual_seed(2))
    upsampled = F.interpolate(lr[:, :3], scale_factor=2, mode="bicubic", align_corners=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(recognizer.preprocess(lr), (upsampled - mean) / std)
    hr = torch.full((1, 3, 32, 128), 0.485)
    assert recognizer.preprocess(hr)[:, 0].abs().max() < 1e-6
    assert recognizer.preprocess(torch.rand(1, 3, 48, 160)).shape == (1, 3, 32, 128)
