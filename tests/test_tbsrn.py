import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from fakes import random_official_state
from stisr_lightning.models.generators.tbsrn import TBSRN, load_official_tbsrn, positional_encoding_2d

OFFICIAL = Path("/work/shared/reference/official_checkpoints/tbsrn.json")
UNUSED_PARAMETERS = 84 + 6 + 10 * (64 * 64 + 64 + 2 * (96 * 64 + 96 * 32 + 2 * 96))  # conv, bn, 10 GruBlocks


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    """Random tensors with the keys, shapes and dtypes of the released `state_dict_G`; TPS buffers from the suite."""
    state = random_official_state(OFFICIAL, seed=4)
    state.update({f"tps.{k}": v for k, v in TBSRN().tps.state_dict().items()})
    return state


def test_output_shape_and_stn_only_in_training():
    torch.manual_seed(0)
    model = TBSRN()
    calls = []
    model.stn_head.register_forward_hook(lambda *args: calls.append(1))
    lr = torch.rand(2, 3, 16, 64)
    model.train()
    assert model(lr).shape == (2, 3, 32, 128) and len(calls) == 1
    model.eval()
    with torch.no_grad():
        sr = model(lr)
    assert sr.shape == (2, 3, 32, 128) and len(calls) == 1 and sr.abs().max() < 1
    assert model.scale_factor == 2


def test_official_layout_loads_and_the_unused_keys_are_named(official_state):
    spec = json.loads(OFFICIAL.read_text())
    wrapped = {"state_dict_G": {f"module.{k}": v for k, v in official_state.items()}}
    with pytest.warns(UserWarning, match=r"ignoring 107 keys .*block2\.gru1, block2\.gru2.*bn, conv"):
        model = load_official_tbsrn(wrapped)
    assert model.num_blocks == 5 and model.use_stn and model.block1[0].in_channels == 3
    key = "block4.feature_enhancer.multihead.linears.2.weight"
    torch.testing.assert_close(model.state_dict()[key], official_state[key])
    assert sum(p.numel() for p in model.parameters()) == spec["num_parameters"] - UNUSED_PARAMETERS

    used = {k: v for k, v in official_state.items() if not k.startswith(("conv.", "bn.")) and ".gru" not in k}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_official_tbsrn(used)
    del used["block3.feature_enhancer.linear.bias"]
    with pytest.raises(ValueError, match="block3.feature_enhancer.linear.bias"):
        load_official_tbsrn(used)


def test_position_code_is_the_official_2d_sinusoid():
    code = positional_encoding_2d(64, 16, 64)
    assert code.shape == (64, 16, 64)
    # Channels 0..31 encode x (width), 32..63 encode y (height), as sin/cos pairs at frequencies 10000^(-2k/32).
    assert code[0, 5, 7].item() == pytest.approx(math.sin(7.0))
    assert code[1, 5, 7].item() == pytest.approx(math.cos(7.0))
    assert code[2, 9, 7].item() == pytest.approx(math.sin(7.0 * 10000 ** (-2 / 32)), abs=1e-6)
    assert code[32, 5, 7].item() == pytest.approx(math.sin(5.0))
    assert code[35, 5, 60].item() == pytest.approx(math.cos(5.0 * 10000 ** (-2 / 32)), abs=1e-6)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="scale_factor"):
        TBSRN(scale_factor=3)
    with pytest.raises(ValueError, match="in_channels"):
        TBSRN(in_channels=1)
