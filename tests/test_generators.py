import json

import pytest
import torch
import torch.nn.functional as F

from fakes import OFFICIAL_CHECKPOINTS, random_official_state
from stisr_lightning.models.blocks.srb import GruBlock, RecurrentResidualBlock, UpsampleBlock
from stisr_lightning.models.generators.bicubic import Bicubic
from stisr_lightning.models.generators.srcnn import SRCNN
from stisr_lightning.models.generators.srresnet import SRResNet
from stisr_lightning.models.generators.tsrn import TSRN, load_official_tsrn

TSRN_JSON = json.loads((OFFICIAL_CHECKPOINTS / "tsrn.json").read_text())


def test_gru_block_runs_along_width_per_row():
    torch.manual_seed(0)
    block = GruBlock(6, 8)
    x = torch.randn(2, 6, 5, 7)
    out = block(x)
    assert out.shape == (2, 8, 5, 7)
    # rows are independent sequences: permuting rows permutes the output rows
    order = torch.tensor([4, 2, 0, 1, 3])
    assert torch.allclose(block(x[:, :, order]), out[:, :, order], atol=1e-6)
    # ... while the width is a sequence: changing the last column changes earlier columns (backward direction)
    changed = x.clone()
    changed[..., -1] += 1
    assert not torch.allclose(block(changed)[..., 0], out[..., 0])
    with pytest.raises(ValueError, match="even"):
        GruBlock(4, 5)


def test_srb_and_upsample_shapes():
    x = torch.randn(2, 16, 4, 8)
    assert RecurrentResidualBlock(16)(x).shape == x.shape
    assert UpsampleBlock(16, 2)(x).shape == (2, 16, 8, 16)


def test_bicubic_equals_interpolate():
    lr = torch.rand(2, 4, 16, 64)
    model = Bicubic(scale_factor=2)
    expected = F.interpolate(lr, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    assert torch.equal(model(lr), expected)
    assert list(model.parameters()) == []
    assert model.scale_factor == 2


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize(
    "build",
    [
        lambda c: Bicubic(),
        lambda c: SRCNN(in_channels=c),
        lambda c: SRResNet(in_channels=c, num_blocks=2),
        lambda c: TSRN(in_channels=c, num_blocks=2),
        lambda c: TSRN(in_channels=c, num_blocks=2, use_stn=False),
    ],
)
def test_generator_shapes(build, channels):
    model = build(channels)
    lr = torch.rand(2, channels, 16, 64)
    for train in (True, False):
        model.train(train)
        assert model(lr).shape == (2, channels, 32, 128)
    assert model.scale_factor == 2


def test_srresnet_default_depth_and_x4():
    model = SRResNet()
    assert len(model.body) == 16
    assert SRResNet(scale_factor=4, num_blocks=1)(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="power of 2"):
        SRResNet(scale_factor=3)


def test_tsrn_stn_only_in_training():
    torch.manual_seed(0)
    with_stn = TSRN(num_blocks=2)
    without = TSRN(num_blocks=2, use_stn=False)
    without.load_state_dict({k: v for k, v in with_stn.state_dict().items() if not k.startswith(("stn_head", "tps"))})
    lr = torch.rand(2, 4, 16, 64)
    with_stn.eval()
    without.eval()
    assert torch.equal(with_stn(lr), without(lr))
    with_stn.train()
    out = with_stn(lr)
    assert out.abs().max() < 1  # tanh output, unclamped
    out.square().mean().backward()
    assert with_stn.stn_head.stn_fc2.weight.grad.abs().sum() > 0


def test_tsrn_state_dict_matches_official_layout():
    model = TSRN()
    ours = [(key, list(value.shape), str(value.dtype)) for key, value in model.state_dict().items()]
    official = [tuple(entry) for entry in TSRN_JSON["keys"]]
    assert sorted(map(tuple, ours)) == sorted(official)
    assert sum(p.numel() for p in model.parameters()) == TSRN_JSON["num_parameters"]


def test_load_official_tsrn_from_container_with_prefix(tmp_path):
    state = random_official_state("tsrn")
    path = tmp_path / "model_best.pth"
    torch.save({"state_dict_G": {f"module.{k}": v for k, v in state.items()}, "info": {"iters": 3}}, path)
    model = load_official_tsrn(path)
    assert model.use_stn and model.num_blocks == 5 and model.scale_factor == 2
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    assert load_official_tsrn(state).block1[0].weight.shape == (64, 4, 9, 9)


def test_load_official_tsrn_reports_bad_keys():
    state = random_official_state("tsrn")
    del state["block3.gru1.conv1.bias"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing 1: \[block3.gru1.conv1.bias\]; unexpected 1: \[extra.weight\]"):
        load_official_tsrn({"state_dict_G": state})
    with pytest.raises(ValueError, match="not a TSRN"):
        load_official_tsrn({"state_dict_G": {"conv.weight": torch.zeros(1)}})
    with pytest.raises(ValueError, match="lr_size"):
        load_official_tsrn(random_official_state("tsrn"), lr_size=(32, 128))


@pytest.mark.parametrize(
    "build",
    [
        lambda: SRCNN(),
        lambda: SRResNet(num_blocks=2, channels=16),
        lambda: TSRN(in_channels=3, num_blocks=2, channels=16),
    ],
)
def test_overfit_one_batch_reduces_mse(build):
    torch.manual_seed(0)
    model = build()
    hr = F.interpolate(torch.rand(2, 3, 8, 32), size=(32, 128), mode="bilinear", align_corners=False)
    lr = F.interpolate(hr, size=(16, 64), mode="area")
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = F.mse_loss(model(lr), hr)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
