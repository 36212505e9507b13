"""The three STISR evaluation recognizers (CRNN, MORAN, ASTER): official layouts, loaders, shapes, decoding."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fakes import OFFICIAL_CHECKPOINTS, random_official_state
from stisr_lightning.data.charset import PRINTABLE
from stisr_lightning.models.recognizers.aster import ASTER, DecoderUnit
from stisr_lightning.models.recognizers.crnn import CRNN, bicubic_gray
from stisr_lightning.models.recognizers.moran import MORAN

CLASSES = {"crnn": CRNN, "moran": MORAN, "aster": ASTER}


def official_keys(name: str) -> list[tuple[str, list[int], str]]:
    return [tuple(entry) for entry in json.loads((OFFICIAL_CHECKPOINTS / f"{name}.json").read_text())["keys"]]


def save_official(name: str, state: dict[str, torch.Tensor], path: Path) -> None:
    """Save in the container of the released file: plain, `module.`-prefixed, or `{'state_dict': ...}`."""
    if name == "moran":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    elif name == "aster":
        torch.save({"state_dict": state, "epoch": 3, "best_res": 0.5}, path)
    else:
        torch.save(state, path)


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: cls().eval() for name, cls in CLASSES.items()}


@pytest.fixture
def fast_models(models, monkeypatch) -> dict[str, torch.nn.Module]:
    """The same models with ASTER decoding 4 steps instead of 100, to keep the tests fast."""
    monkeypatch.setattr(models["aster"], "max_len", 4)
    return models


@pytest.mark.parametrize("name", list(CLASSES))
def test_state_dict_matches_official_layout(models, name):
    ours = [(k, list(v.shape), str(v.dtype)) for k, v in models[name].state_dict().items()]
    assert ours == [(k, list(s), t) for k, s, t in official_keys(name)]


@pytest.mark.parametrize("name", list(CLASSES))
def test_official_container_loads_and_reproduces_outputs(tmp_path, name):
    state = random_official_state(name, scale=0.1)
    options = {"max_len": 4} if name == "aster" else {}
    reference = CLASSES[name](**options).eval()
    reference.load_state_dict(state)
    path = tmp_path / f"{name}.pth"
    save_official(name, state, path)

    loaded = CLASSES[name].from_official_checkpoint(path, **options).eval()

    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    images = torch.rand(2, 3, 16, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = reference(images), loaded(images)
    assert torch.isfinite(actual.logits).all()
    assert torch.equal(actual.logits, expected.logits)
    assert torch.equal(actual.features, expected.features)


@pytest.mark.parametrize(("name", "wrong"), [("crnn", "moran"), ("moran", "aster"), ("aster", "crnn")])
def test_checkpoint_of_another_architecture_lists_keys(tmp_path, models, name, wrong):
    path = tmp_path / "wrong.pth"
    save_official(wrong, models[wrong].state_dict(), path)
    first_expected_key = official_keys(name)[0][0]
    with pytest.raises(ValueError, match=rf"wrong\.pth.*missing \d+: \[{first_expected_key}.*unexpected \d+"):
        CLASSES[name].from_official_checkpoint(path)


@pytest.mark.parametrize("name", list(CLASSES))
def test_missing_checkpoint_names_the_file(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        CLASSES[name].from_official_checkpoint(tmp_path / "nowhere.pth")


EXPECTED_SHAPES = {
    # logits, attention, features (ASTER decodes `max_len` = 4 steps here, 100 by default)
    "crnn": ((2, 26, 37), None, (2, 512)),
    "moran": ((2, 20, 37), (2, 20, 1, 25), (2, 256)),
    "aster": ((2, 4, 97), (2, 4, 1, 25), (2, 512)),
}


@pytest.mark.parametrize("size", [(16, 64), (32, 128)])
@pytest.mark.parametrize("name", list(CLASSES))
def test_forward_shapes(fast_models, name, size):
    with torch.no_grad():
        output = fast_models[name](torch.rand(2, 3, *size))
    logits, attention, features = EXPECTED_SHAPES[name]
    assert output.logits.shape == logits
    assert (output.attention is None) if attention is None else (output.attention.shape == attention)
    assert output.features.shape == features
    if attention is not None:  # attention weights over the feature sequence sum to one
        torch.testing.assert_close(output.attention.sum(-1), torch.ones(attention[:-1]))


@pytest.mark.parametrize("name", list(CLASSES))
def test_extra_mask_channel_is_ignored(models, name):
    rgb = torch.rand(2, 3, 16, 64)
    with_mask = torch.cat([rgb, torch.rand(2, 1, 16, 64)], dim=1)
    assert torch.equal(models[name].preprocess(rgb), models[name].preprocess(with_mask))


def test_gray_preprocessing_matches_hand_computation():
    image = torch.empty(1, 3, 16, 64)
    image[:, 0], image[:, 1], image[:, 2] = 1.0, 0.5, 0.25
    gray = bicubic_gray(image)
    assert gray.shape == (1, 1, 32, 100)
    torch.testing.assert_close(gray, torch.full_like(gray, 0.299 + 0.587 * 0.5 + 0.114 * 0.25))


def test_aster_preprocessing_maps_to_minus_one_one(models):
    image = torch.tensor([0.0, 0.25, 1.0]).view(1, 3, 1, 1).expand(1, 3, 16, 64)
    assert torch.equal(models["aster"].preprocess(image)[0, :, 0, 0], torch.tensor([-1.0, -0.5, 1.0]))


def test_morn_with_zero_offsets_is_identity_under_official_align_corners(models):
    morn = MORAN(align_corners=True).MORN.eval()
    torch.nn.init.zeros_(morn.cnn[16].weight)  # last BatchNorm: offsets become exactly zero
    torch.nn.init.zeros_(morn.cnn[16].bias)
    image = torch.rand(2, 1, 32, 100)
    with torch.no_grad():
        torch.testing.assert_close(morn(image), image)


def test_crnn_decode_collapses_repeats_and_drops_blanks(models):
    ids = torch.tensor([[0, 1, 1, 0, 1, 2, 2, 0, 11], [0] * 9])  # class k > 0 is charset[k - 1]
    assert models["crnn"].decode(F.one_hot(ids, 37).float()) == ["001a", ""]


def test_crnn_charset_is_configurable():
    crnn = CRNN(charset=PRINTABLE)
    assert crnn.rnn[1].embedding.out_features == 95
    with torch.no_grad():
        assert crnn(torch.rand(1, 3, 16, 64)).logits.shape == (1, 26, 95)


def test_moran_decode_cuts_at_end_symbol(models):
    ids = torch.tensor([[10, 11, 36, 12, 36], [1, 2, 3, 4, 5]])  # 36 = '$'
    assert models["moran"].decode(F.one_hot(ids, 37).float()) == ["ab", "12345"]


def test_aster_decode_stops_at_eos_skips_unknown_and_normalizes(models, monkeypatch):
    row = [PRINTABLE.index(ch) for ch in "Ab-1"] + [96, PRINTABLE.index("2"), 94, PRINTABLE.index("z")]
    logits = F.one_hot(torch.tensor([row]), 97).float()
    assert models["aster"].decode(logits) == ["ab12"]
    monkeypatch.setattr(models["aster"], "normalize_text", False)
    assert models["aster"].decode(logits) == ["Ab-12"]


def test_aster_encode_text_appends_eos_and_pads(models):
    aster = models["aster"]
    targets, lengths = aster.encode_text(["Ab", "x\u20ac!"])
    a, b, x, bang = (PRINTABLE.index(ch) for ch in "Abx!")
    assert targets.tolist() == [[a, b, 94, 95], [x, 96, bang, 94]]
    assert lengths.tolist() == [3, 4]
    with torch.no_grad():
        assert aster(torch.rand(2, 3, 16, 64), targets).logits.shape == (2, 4, 97)


def test_aster_training_loss_sums_each_word_then_divides_by_the_batch_like_aster_pytorch(models, monkeypatch):
    """aster.pytorch's SequenceCrossEntropyLoss (sample_normalize=True): sum of -log p over every word's tokens, EOS
    included, divided by the batch size, not by the number of tokens."""
    aster = models["aster"]
    logits = torch.randn(2, 4, 97, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(type(aster), "__call__", lambda self, images, targets: types.SimpleNamespace(logits=logits))
    targets, lengths = aster.encode_text(["Ab", "x\u20ac!"])
    log_p = logits.log_softmax(-1)
    per_word = [-sum(log_p[i, t, targets[i, t]] for t in range(lengths[i])) for i in range(2)]
    assert aster.training_loss(torch.zeros(2, 3, 16, 64), ["Ab", "x\u20ac!"]).item() == pytest.approx(
        float(per_word[0] + per_word[1]) / 2, rel=1e-5)


@pytest.mark.parametrize("name", list(CLASSES))
def test_gradients_reach_the_input_image(fast_models, name):
    images = torch.rand(2, 3, 16, 64, requires_grad=True)
    fast_models[name](images).logits.log_softmax(-1)[..., 1].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_aster_beam_width_one_equals_greedy(fast_models):
    aster = fast_models["aster"]
    images = torch.rand(2, 3, 16, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = aster(images).logits
        beam = aster.beam_search(aster.encode(images), beam_width=1)
    greedy = logits.argmax(-1)
    for greedy_row, beam_row in zip(greedy.tolist(), beam.tolist()):
        end = greedy_row.index(94) + 1 if 94 in greedy_row else len(greedy_row)
        assert beam_row[:end] == greedy_row[:end]
    assert aster.ids_to_text(beam) == aster.decode(logits)


class ScriptedDecoder(DecoderUnit):
    """Fixed next-symbol probabilities given the previous symbol (charset 'ab': a=0, b=1, EOS=2, BOS=5)."""

    TABLE = {5: [0.6, 0.1, 0.2, 0.05, 0.05], 0: [0.1, 0.5, 0.3, 0.05, 0.05], 1: [0.05, 0.03, 0.9, 0.01, 0.01]}

    def forward(self, x, x_proj, state, y_prev):
        rows = [self.TABLE.get(int(y), [0.2] * 5) for y in y_prev]
        return torch.tensor(rows).log(), state, torch.ones(x.shape[:2]) / x.shape[1]


def test_aster_beam_search_reproduces_official_backtracking():
    # Greedy reads a, b, EOS ("ab", p = 0.27). With two beams, the official backtracking fills the slots with the
    # hypotheses that ended at steps 1 and 0 ("a", p = 0.18, and "", p = 0.2), overwriting "ab"; it returns "".
    aster = ASTER(charset="ab", max_len=3, stn=False, normalize_text=False)
    aster.decoder.decoder = ScriptedDecoder(sDim=4, xDim=8, yDim=5, attDim=4)
    feats = torch.zeros(2, 3, 8)
    assert aster.beam_search(feats, beam_width=2).tolist() == [[2, 1, 2]] * 2
    assert aster.beam_search(feats, beam_width=1).tolist() == [[0, 1, 2]] * 2
    assert aster.ids_to_text(aster.beam_search(feats, beam_width=2)) == ["", ""]


def test_aster_read_uses_beam_width(monkeypatch, fast_models):
    aster = fast_models["aster"]
    images = torch.rand(2, 3, 16, 64)
    calls = []
    original = aster.beam_search
    monkeypatch.setattr(aster, "beam_search", lambda feats, width: calls.append(width) or original(feats, width))
    texts = aster.read(images)
    assert calls == [5] and len(texts) == 2 and all(set(t) <= set("0123456789abcdefghijklmnopqrstuvwxyz") for t in texts)
