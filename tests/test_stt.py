import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fakes import random_official_state
from stisr_lightning.models.recognizers.stt_transformer import STTTransformer, encode_stt_labels

OFFICIAL = Path("/work/shared/reference/official_checkpoints/tbsrn_transformer.json")


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    """Random tensors with exactly the keys and shapes of `pretrain_transformer.pth`."""
    state = random_official_state(OFFICIAL, seed=3)
    return state


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return STTTransformer().eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 32, 128, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def memory_heads(model, images):
    with torch.no_grad():
        return model.encode(images)[1]


@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_layout_loads_strictly(official_state, prefix):
    state = {prefix + key: value for key, value in official_state.items()}
    model = STTTransformer.from_official_checkpoint(state)
    loaded = model.state_dict()
    for key in ("decoder.multihead.linears.1.weight", "encoder.cnn.layer3.4.bn2.running_var", "pe.pe"):
        torch.testing.assert_close(loaded[key], state[prefix + key])
    assert sum(p.numel() for p in model.parameters()) == json.loads(OFFICIAL.read_text())["num_parameters"]


def test_checkpoint_with_a_missing_key_names_it(official_state):
    state = dict(official_state)
    del state["generator_word.proj.bias"]
    with pytest.raises(ValueError, match="generator_word.proj.bias"):
        STTTransformer.from_official_checkpoint(state)


def test_position_table_is_the_sinusoid(model):
    pe = model.pe.pe
    assert pe.shape == (1, 5000, 512)
    assert pe[0, 3, 0].item() == pytest.approx(math.sin(3.0), abs=1e-6)
    assert pe[0, 3, 1].item() == pytest.approx(math.cos(3.0), abs=1e-6)
    assert pe[0, 7, 2].item() == pytest.approx(math.sin(7.0 * 10000 ** (-2 / 512)), abs=1e-6)


def test_label_encoding_is_the_official_one():
    inputs, targets, lengths = encode_stt_labels(["He-llo!", "ab3", ""])
    h, e, l, o, a, b, three = 18, 15, 22, 25, 11, 12, 4  # '-0123456789abc...': digit d -> d + 1, letter -> 11 + k
    assert targets.tolist() == [[h, e, l, l, o, 0], [a, b, three, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    assert inputs.tolist() == [[0, h, e, l, l, o], [0, a, b, three, 0, 0], [0, 0, 0, 0, 0, 0]]
    assert lengths.tolist() == [6, 4, 1]


def test_teacher_forced_shapes_and_causality(model, images, memory_heads):
    with torch.no_grad():
        logits, attention, lengths = model.teacher_forced(images, ["Hello", "ab3"])
        assert logits.shape == (2, 6, 37) and attention.shape == (2, 16, 6, 256) and lengths.tolist() == [6, 4]
        torch.testing.assert_close(attention.sum(-1), torch.ones(2, 16, 6))
        # Changing the last input token changes only the last step (causal self-attention).
        inputs, _, _ = encode_stt_labels(["Hello", "ab3"])
        changed = inputs.clone()
        changed[:, -1] = 30
        before, _ = model.decode_tokens(memory_heads, inputs)
        after, _ = model.decode_tokens(memory_heads, changed)
    torch.testing.assert_close(before, logits)
    torch.testing.assert_close(before[:, :-1], after[:, :-1])
    assert (before[:, -1] - after[:, -1]).abs().max() > 1e-4


def test_greedy_decoding_is_consistent_and_stops(model, images, memory_heads):
    model.max_length = 4
    try:
        with torch.no_grad():
            output = model(images)
            assert output.logits.shape[:2] == (2, 4) and output.attention.shape == (2, 16, 4, 256)
            assert output.features.shape == (2, 1024)
            # Feeding the greedy choices back with teacher forcing reproduces the logits of every step.
            tokens = torch.cat([torch.zeros(2, 1, dtype=torch.long), output.logits.argmax(-1)[:, :-1]], dim=1)
            again, _ = model.decode_tokens(memory_heads, tokens)
        torch.testing.assert_close(again, output.logits, atol=1e-4, rtol=1e-4)
    finally:
        model.max_length = 25


def test_decode_cuts_at_the_end_token(model):
    logits = torch.full((2, 5, 37), -5.0)
    for row, tokens in enumerate([[18, 19, 0, 11, 0], [1, 36, 2, 10, 12]]):  # "hi-a-", "0z19b"
        logits[row, torch.arange(5), torch.tensor(tokens)] = 5.0
    assert model.decode(logits) == ["hi", "0z19b"]


def test_training_loss_is_ce_over_characters_and_end_tokens(model, images, memory_heads):
    labels = ["Hello", "ab3"]
    inputs, targets, _ = encode_stt_labels(labels)
    with torch.no_grad():
        loss = model.training_loss(images, labels)
        logits, _ = model.decode_tokens(memory_heads, inputs)
    rows = torch.cat([logits[0, :6], logits[1, :4]])
    expected = F.cross_entropy(rows, torch.cat([targets[0, :6], targets[1, :4]]))
    torch.testing.assert_close(loss, expected)
