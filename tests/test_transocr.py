"""TransOCR against numbers of the official code (FudanVI/benchmarking-chinese-text-recognition, run on CPU in a
scratch folder): a reduced alphabet (38 characters, 41 classes) with the official, hard-coded layer sizes, whose
weights are regenerated here from per-key seeds (`seeded_state`), and the full configuration's key shapes."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import pytest
import torch

from stisr_lightning.data.charset import DIGITS_LOWER
from stisr_lightning.models.recognizers.transocr import (
    TransOCR,
    load_official_transocr,
    text_lengths,
    token_confidences,
)

FIXTURES = Path(__file__).parent / "fixtures" / "transocr"


def seeded_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights from a seed per key name (crc32), independent of construction order; the fixture script fills the
    official model with the same function. The classifier is sharpened and END made less likely so that the greedy
    reads are not empty and their ids have clear margins."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(("num_batches_tracked", "pe.pe")):
            state[name] = tensor.clone()
            continue
        noise = torch.randn(tensor.shape, generator=torch.Generator().manual_seed(zlib.crc32(name.encode())))
        if name.endswith("running_var"):
            value = 0.5 + noise.abs()
        elif tensor.dim() > 1:
            value = noise * (2 / tensor[0].numel()) ** 0.5
        elif name.endswith(("weight", "a_2")):
            value = 1 + 0.1 * noise
        else:
            value = 0.01 * noise
        if name.startswith("generator_word."):
            value = value * 3
        if name == "generator_word.proj.bias":
            value[-1] -= 6
        state[name] = value
    return state


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURES / "reduced_official.pt", weights_only=True)


@pytest.fixture(scope="module")
def reduced(official):
    torch.manual_seed(0)
    model = TransOCR(charset=official["alphabet"])
    model.load_state_dict(seeded_state(model))
    return model.eval()


@pytest.fixture(scope="module")
def images(official):
    return official["images_uint8"].float() / 255


def test_weights_are_the_fixtures(reduced, official):
    state = reduced.state_dict()
    assert next(iter(state)) == official["first_key"]
    checksum = sum(float(v.double().abs().sum()) for k, v in state.items() if not k.endswith("pe.pe"))
    assert checksum == pytest.approx(official["checksum"], rel=1e-9)


def test_label_encoding_is_the_official_converter(reduced, official):
    text_input, targets, lengths = reduced.encode_text(official["labels"])
    assert torch.equal(text_input, official["text_input"])
    assert torch.equal(lengths, official["lengths"])
    packed = torch.cat([row[:length] for row, length in zip(targets, lengths)])
    assert torch.equal(packed, official["text_gt"])


def test_teacher_forced_logits_and_loss_match_official(reduced, official, images):
    text_input, _, _ = reduced.encode_text(official["labels"])
    with torch.no_grad():
        output = reduced(images, text_input)
        loss = reduced.training_loss(images, official["labels"])
    expected = official["teacher_forced_logits"]
    assert output.logits.shape == expected.shape == (2, 5, 41)
    # fp32 summation order differs between CPUs' GEMM kernels: measured 9.5e-6 on an AVX2 EPYC, 1.2e-4 on an AMX
    # Xeon (logits up to 12.8, so 1e-5 relative); a wrong layer or mask moves logits by whole units.
    assert (output.logits - expected).abs().max() < 3e-4
    assert output.attention.shape == (2, 4, 5, 32)
    assert output.features.shape == (2, 1024)
    assert float(loss) == pytest.approx(float(official["loss"]), abs=1e-5)  # measured 1.9e-6


def test_greedy_read_matches_official(reduced, official, images):
    with torch.no_grad():
        logits = reduced(images).logits
    ids, confidences, lengths = reduced.read_with_confidence(images)
    # Per-step logits, measured 3.9e-5; the official loop's own last pass differs from its steps by 1.7e-4.
    assert (logits - official["greedy_logits"]).abs().max() < 2e-4
    assert ids.dtype == torch.long and ids.shape == (2, 24)
    assert torch.equal(ids, official["greedy_ids"])
    assert (confidences - official["greedy_probs"]).abs().max() < 5e-5  # measured 7.3e-6
    assert lengths.tolist() == [len(text) for text in official["greedy_texts"]] == [0, 4]
    assert reduced.read(images) == official["greedy_texts"] == ["", "p0n0"]
    assert reduced.decode(logits) == official["greedy_texts"]
    # The official per-image score: the product over the characters and END.
    overall = torch.stack([conf[: length + 1].prod() for conf, length in zip(confidences, lengths)])
    assert torch.allclose(overall, official["greedy_overall_prob"], atol=1e-6)


def test_full_configuration_matches_official_layout(tmp_path, monkeypatch):
    info = json.loads((FIXTURES / "official_full_shapes.json").read_text())
    alphabet = "".join(chr(0x4E00 + i) for i in range(info["alphabet_characters"]))
    (tmp_path / "benchmark.txt").write_text(alphabet + "\n", encoding="utf-8")
    monkeypatch.setenv("STISR_WEIGHTS", str(tmp_path))
    with torch.device("meta"):
        model = TransOCR()
    assert model.num_classes == info["num_classes"] == 7937
    assert model.max_length == 24
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == info["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == info["parameters"] == 83_904_779


def test_official_file_layouts_load_strictly(reduced, official):
    state = reduced.state_dict()
    for prefix in ("", "module.", "module.module."):
        loaded = load_official_transocr({prefix + k: v for k, v in state.items()}, official["alphabet"])
        assert torch.equal(loaded.generator_word.proj.bias, reduced.generator_word.proj.bias)
    wrapped = TransOCR.from_official_checkpoint({"state_dict": state}, charset=official["alphabet"], max_length=5)
    assert wrapped.max_length == 5
    with pytest.raises(ValueError, match=r"missing 1: \[decoder.pff.w_1.bias\]"):
        load_official_transocr({k: v for k, v in state.items() if k != "decoder.pff.w_1.bias"}, official["alphabet"])
    with pytest.raises(ValueError, match=r"embedding_word.lut.weight has shape \(41, 512\), TransOCR expects \(40, "):
        load_official_transocr(state, official["alphabet"][:-1])


def test_missing_files_are_named(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="missing_transocr.pth"):
        load_official_transocr(tmp_path / "missing_transocr.pth", DIGITS_LOWER)
    with pytest.raises(FileNotFoundError, match="no_alphabet.txt"):
        TransOCR(charset=str(tmp_path / "no_alphabet.txt"))
    monkeypatch.setenv("STISR_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="official:benchmark.txt"):
        TransOCR()


def test_confidences_are_softmax_of_the_chosen_ids():
    logits = torch.tensor(
        [
            [[0.0, math.log(3.0), 0.0, 0.0, 0.0], [2.0, 1.0, 0.0, -1.0, 5.0]],
            [[-1.0, -1.0, -1.0, 4.0, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0]],
        ]
    )
    ids, confidences = token_confidences(logits)
    assert ids.tolist() == [[1, 4], [3, 0]]
    assert confidences[0, 0] == pytest.approx(3 / 7)
    assert confidences[1, 1] == pytest.approx(1 / 5)
    expected = torch.stack([torch.softmax(row, -1)[i] for row, i in zip(logits.flatten(0, 1), ids.flatten())])
    assert torch.allclose(confidences.flatten(), expected)


def test_text_lengths_stop_at_end_and_cap():
    ids = torch.tensor([[4, 9, 2, 9], [9, 1, 1, 1], [1, 2, 3, 9], [1, 2, 3, 4]])
    assert text_lengths(ids, end=9, max_characters=3).tolist() == [1, 0, 3, 3]


def test_read_tokens_use_the_suite_convention(reduced, monkeypatch):
    """class = charset index + 1, 0 where no character (START, '\\xad', after END), padded or cut."""
    ids = torch.tensor([[5, 0, 1, 7, 40, 9], [40, 3, 3, 3, 3, 3]])
    confidences = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.3, 0.2, 0.2, 0.2, 0.2, 0.2]])
    monkeypatch.setattr(reduced, "read_with_confidence", lambda images: (ids, confidences, torch.tensor([4, 0])))
    tokens, scores = reduced.read_tokens(torch.zeros(2, 3, 32, 128), max_length=8)
    assert tokens.tolist() == [[4, 0, 0, 6, 0, 0, 0, 0], [0] * 8]
    assert torch.allclose(scores, torch.tensor([[0.9, 0, 0, 0.6, 0, 0, 0, 0], [0.0] * 8]))
    assert reduced.read_tokens(torch.zeros(2, 3, 32, 128), max_length=2)[0].tolist() == [[4, 0], [0, 0]]


def test_english_charset_and_labels(reduced):
    with torch.device("meta"):
        english = TransOCR(charset=DIGITS_LOWER)
    assert english.num_classes == 39 and english.end == 38
    text_input, targets, lengths = reduced.encode_text(["ＡＢ1?", ""])
    a, b, one = (reduced.charset.index(ch) + 2 for ch in "ab1")
    assert text_input.tolist() == [[0, a, b, one], [0, 0, 0, 0]]
    assert targets.tolist() == [[a, b, one, 40], [40, 0, 0, 0]]
    assert lengths.tolist() == [4, 1]
    ids = torch.tensor([[0, a, 1, b, 40, one]])
    assert reduced.ids_to_text(ids, torch.tensor([5])) == ["ab"]


def test_bad_arguments_are_reported(reduced):
    with pytest.raises(ValueError, match="unique characters"):
        TransOCR(charset="abca")
    with pytest.raises(ValueError, match="resize_mode"):
        TransOCR(charset="ab", resize_mode="area")
    with pytest.raises(ValueError, match="max_length"):
        TransOCR(charset="ab", max_length=0)
    with pytest.raises(ValueError, match=r"expected RGB images"):
        reduced.preprocess(torch.zeros(1, 1, 32, 256))


def test_preprocess_resizes_and_normalizes(reduced):
    images = torch.full((1, 4, 64, 512), 0.25)
    assert torch.allclose(reduced.preprocess(images), torch.full((1, 3, 32, 256), -0.5))
    with torch.device("meta"):
        difftsr_style = TransOCR(charset="ab", normalize=False, resize_mode="nearest")
    assert torch.equal(difftsr_style.preprocess(images), torch.full((1, 3, 32, 256), 0.25))
