import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stisr_lightning.data.synthetic import discover_fonts
from stisr_lightning.losses.text_focus import (
    TextFocusLoss,
    _match_official_statistics,
    confusion_weighted_ce,
    glyph_confusion_weights,
    official_confusion_weights,
)
from stisr_lightning.models.recognizers.stt_transformer import STTTransformer, encode_stt_labels

ALPHABET = "-0123456789abcdefghijklmnopqrstuvwxyz"
GLYPH = {ch: i for i, ch in enumerate("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")}


def synthetic_distances() -> np.ndarray:
    """Symmetric 62x62, zero diagonal, distinct positive values; '0'-'1' is 0 to exercise 1/0 -> 1."""
    i, j = np.meshgrid(np.arange(62), np.arange(62), indexing="ij")
    distances = 0.5 + ((i + j) % 11) * 0.25 + 0.01 * np.abs(i - j)
    np.fill_diagonal(distances, 0.0)
    distances[0, 1] = distances[1, 0] = 0.0
    return distances


def official_loop(distances: np.ndarray) -> np.ndarray:
    """STT's `load_confuse_matrix`, step by step with its element loop, as a reference."""
    rows = np.concatenate([np.ones((1, 62)), distances[:10], distances[36:], distances[10:36]])
    with np.errstate(divide="ignore"):
        table = 1 / np.concatenate([np.ones((63, 1)), rows], axis=1)
    table[np.isinf(table)] = 1
    table = table.astype(np.float32)
    standard = "-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for i in range(63):
        for j in range(63):
            if i != j and standard[j].islower():
                table[i, j] = max(table[i, j], table[i, j + 26])
    return table[:37, :37]


@pytest.fixture(scope="module")
def confuse_pkl(tmp_path_factory):
    path = tmp_path_factory.mktemp("confuse") / "confuse.pkl"
    path.write_bytes(pickle.dumps(synthetic_distances()))
    return str(path)


def test_official_table_matches_a_hand_computation(confuse_pkl):
    d = synthetic_distances()
    w = official_confusion_weights(confuse_pkl)
    c = ALPHABET.index
    assert w.shape == (37, 37) and w.dtype == torch.float32
    assert torch.equal(w[0], torch.ones(37)) and torch.equal(w[:, 0], torch.ones(37))  # end row, pad column
    assert w[c("3"), c("7")].item() == pytest.approx(1 / d[GLYPH["3"], GLYPH["7"]])
    assert w[c("0"), c("1")].item() == 1.0  # distance 0 -> inf -> 1
    assert w[c("5"), c("5")].item() == 1.0
    # Rows are targets in [end, digits, lower, UPPER] order; columns stay [pad, digits, UPPER, lower], and a letter
    # column takes the larger of its UPPER (column j) and lower (column j + 26) glyph.
    assert w[c("a"), c("7")].item() == pytest.approx(1 / d[GLYPH["a"], GLYPH["7"]])
    assert w[c("a"), c("b")].item() == pytest.approx(max(1 / d[GLYPH["a"], GLYPH["B"]], 1 / d[GLYPH["a"], GLYPH["b"]]))
    assert w[c("0"), c("q")].item() == pytest.approx(max(1 / d[GLYPH["0"], GLYPH["Q"]], 1 / d[GLYPH["0"], GLYPH["q"]]))
    # On the diagonal there is no max: w[o][o] = 1 / dist(o, O).
    assert w[c("o"), c("o")].item() == pytest.approx(1 / d[GLYPH["o"], GLYPH["O"]])
    assert torch.equal(w, torch.from_numpy(official_loop(d)))


def test_official_loader_refuses_anything_but_a_numpy_array(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(os.getcwd))
    with pytest.raises(ValueError, match="evil.pkl: not a pickled numpy array"):
        official_confusion_weights(evil)
    wrong = tmp_path / "wrong.pkl"
    wrong.write_bytes(pickle.dumps(np.zeros((10, 10))))
    with pytest.raises(ValueError, match="wrong.pkl: expected a 62x62"):
        official_confusion_weights(wrong)


def test_rendered_distances_take_the_official_statistics():
    generator = torch.Generator().manual_seed(0)
    raw = 0.5 + torch.rand(62, 62, generator=generator, dtype=torch.float64)
    raw = (raw + raw.T) / 2
    raw.fill_diagonal_(0)
    mapped = _match_official_statistics(raw)
    off = ~torch.eye(62, dtype=torch.bool)
    assert mapped[off].mean().item() == pytest.approx(1.07, rel=1e-6)
    assert mapped[off].min().item() == pytest.approx(0.02, rel=1e-6)
    assert torch.equal(mapped.diagonal(), torch.zeros(62, dtype=torch.float64))
    assert torch.equal(mapped[off].argsort(), raw[off].argsort())  # same ranking


def test_glyph_weights_favour_look_alike_characters():
    w = glyph_confusion_weights(discover_fonts()[:3])
    c = ALPHABET.index
    assert w.shape == (37, 37) and torch.equal(w[0], torch.ones(37))
    assert w.min() > 0 and w.max() <= 50.0 + 1e-4
    assert w[c("o"), c("0")] > 2 * w[c("o"), c("w")]
    assert w[c("l"), c("1")] > 2 * w[c("l"), c("m")]


def test_weighted_ce_is_plain_ce_with_unit_weights_and_matches_a_hand_computation():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 37, generator=generator)
    targets = torch.tensor([3, 0, 36, 11, 3])
    plain = F.cross_entropy(logits, targets)
    torch.testing.assert_close(confusion_weighted_ce(logits, targets, torch.ones(37, 37)), plain)

    tiny_logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    weights = torch.tensor([[1.0, 2.0, 0.5], [4.0, 1.0, 1.0], [0.25, 3.0, 2.0]])
    row0 = -math.log(1.0 * math.e**1.0 / (1.0 * math.e**1.0 + 2.0 * math.e**2.0 + 0.5 * math.e**0.5))  # target 0
    row1 = -math.log(2.0 * math.e**3.0 / (0.25 * math.e**0.0 + 3.0 * math.e**-1.0 + 2.0 * math.e**3.0))  # target 2
    value = confusion_weighted_ce(tiny_logits, torch.tensor([0, 2]), weights)
    assert value.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


@pytest.fixture(scope="module")
def recognizer():
    torch.manual_seed(0)
    return STTTransformer()


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(2)
    return {"hr": torch.rand(2, 4, 32, 128, generator=generator), "label": ["Hi!", "abc1"]}


def test_attention_term_is_zero_for_identical_images_and_positive_otherwise(recognizer, confuse_pkl, batch):
    batch = {"hr": batch["hr"][:1], "label": batch["label"][:1]}  # one image: the ResNet backward is slow on CPU
    loss = TextFocusLoss(recognizer, content_weight=0.0, confuse_pkl=confuse_pkl).train()
    assert not recognizer.training and not any(p.requires_grad for p in recognizer.parameters())
    assert loss({"sr": batch["hr"].clone()}, batch).item() == 0.0
    noise = torch.rand(batch["hr"].shape, generator=torch.Generator().manual_seed(5))
    sr = (batch["hr"] + 0.2 * noise).requires_grad_()
    value = loss({"sr": sr}, batch)
    assert value.item() > 0
    value.backward()
    assert sr.grad is not None and sr.grad[:, :3].abs().sum() > 0
    assert torch.equal(sr.grad[:, 3], torch.zeros_like(sr.grad[:, 3]))  # the mask channel is not read
    assert all(p.grad is None for p in recognizer.parameters())


def test_content_term_is_the_weighted_ce_of_the_sr_predictions(recognizer, confuse_pkl, batch):
    loss = TextFocusLoss(recognizer, attention_weight=0.0, content_weight=1.0, confuse_pkl=confuse_pkl)
    sr = batch["hr"].flip(-1)
    with torch.no_grad():
        value = loss({"sr": sr}, batch)
        logits, _, lengths = recognizer.teacher_forced(sr, batch["label"])
    _, targets, _ = encode_stt_labels(batch["label"])
    assert lengths.tolist() == [3, 5]  # "hi" + end, "abc1" + end: the first 3 steps of sample 0, all 5 of sample 1
    rows, row_targets = torch.cat([logits[0, :3], logits[1]]), torch.cat([targets[0, :3], targets[1]])
    expected = confusion_weighted_ce(rows, row_targets, official_confusion_weights(confuse_pkl))
    torch.testing.assert_close(value, expected)
