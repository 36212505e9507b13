"""ResShift's UNetModelSwin against numbers from the official code, plus TextResShift's cross-attention.

Fixtures (tests/fixtures/resshift_unet/), made by running zsyOAOA/ResShift models/unet.py outside the repository:
- official_full_config.json: the journal config (model.params), its parameter count and {state-dict key: shape};
- official_reduced.pt: two reduced configs with every parameter set by `fill` below (the official init zeroes the
  ResBlock output convs, which would hide half the network), their inputs, official outputs and key shapes.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
import torch

from stisr_lightning.models.generators.resshift_unet import CrossAttention, UNetModelSwin
from stisr_lightning.weights import load_state_dict_strict

FIXTURES = Path(__file__).parent / "fixtures" / "resshift_unet"
OFFICIAL = torch.load(FIXTURES / "official_reduced.pt", weights_only=True)
REDUCED = OFFICIAL["same_size_lq"]["config"]
TEXT = {"context_dim": 16, "cross_attention_heads": 2}


def fill(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The fixture's weights: parameters in sorted-name order from one generator, fan-in scaled."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.ndim >= 2:
                parameter.copy_(noise / math.sqrt(parameter[0].numel()))
            elif name.endswith("weight"):
                parameter.copy_(1 + 0.1 * noise)
            else:
                parameter.copy_(0.1 * noise)
    return model


def seeded(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def text_inputs(model: UNetModelSwin, height: int, width: int, batch: int = 2) -> dict[str, torch.Tensor]:
    return {
        "x": seeded(batch, 3, height, width),
        "timesteps": torch.arange(batch),
        "lq": seeded(batch, 3, height * model.lq_scale, width * model.lq_scale, seed=1),
    }


def cross_model(seed: int = 0, **overrides) -> UNetModelSwin:
    """Reduced network with cross-attention whose non-cross-attention weights are the plain network's `fill`."""
    torch.manual_seed(seed)
    model = UNetModelSwin(**{**REDUCED, **TEXT, **overrides}).eval()
    model.load_resshift_state_dict(fill(UNetModelSwin(**{**REDUCED, **overrides}), seed).state_dict(), "test")
    return model


def perturb_cross_attention(model: UNetModelSwin) -> None:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".proj_out." in name:
                parameter.copy_(0.2 * seeded(*parameter.shape, seed=len(name)))


@pytest.mark.parametrize("case", sorted(OFFICIAL))
def test_reduced_config_reproduces_the_official_output(case):
    fixture = OFFICIAL[case]
    model = fill(UNetModelSwin(**fixture["config"]).eval())
    assert {key: tuple(value.shape) for key, value in model.state_dict().items()} == fixture["state_dict_shapes"]
    with torch.no_grad():
        out = model(fixture["x"], fixture["timesteps"], lq=fixture["lq"])
    assert out.shape == fixture["output"].shape
    torch.testing.assert_close(out, fixture["output"], atol=1e-5, rtol=0)  # measured: 0.0 on CPU float32


@pytest.fixture(scope="module")
def full_model() -> UNetModelSwin:
    return UNetModelSwin().eval()


def test_default_is_the_official_journal_config(full_model):
    official = json.loads((FIXTURES / "official_full_config.json").read_text())
    assert sum(p.numel() for p in full_model.parameters()) == official["num_parameters"] == 118_593_583
    own = {key: list(value.shape) for key, value in full_model.state_dict().items()}
    assert own == official["state_dict_shapes"]
    # a released checkpoint has exactly these keys and shapes: the strict loader accepts them (zero-stride tensors)
    released = {key: torch.zeros(()).expand(shape) for key, shape in official["state_dict_shapes"].items()}
    load_state_dict_strict(full_model, released, "resshift_v3.pth")
    assert full_model.official_keys() == {key: key for key in own}


def test_official_yaml_params_are_the_defaults():
    defaults = {name: p.default for name, p in inspect.signature(UNetModelSwin).parameters.items()}
    for name, value in json.loads((FIXTURES / "official_full_config.json").read_text())["config"].items():
        expected = defaults[name] if name != "num_res_blocks" else (defaults[name],) * 4
        assert (tuple(value) if isinstance(value, list) else value) == expected, name


def test_default_denoises_a_textzoom_latent(full_model):
    # TextZoom HR 32x128 -> VQ-f4 latent 8x32; the LQ image enters at the latent's size (lq_size == image_size)
    with torch.no_grad():
        out = full_model(**text_inputs(full_model, 8, 32, batch=1))
    assert out.shape == (1, 3, 8, 32) and torch.isfinite(out).all()


def test_fresh_cross_attention_is_the_identity():
    plain = fill(UNetModelSwin(**REDUCED).eval())
    model = cross_model()
    inserted = [name for name, module in model.named_modules() if type(module).__name__ == "SpatialTransformer"]
    assert inserted == [
        "input_blocks.1.2",
        "input_blocks.3.2",
        "middle_block.2",
        "output_blocks.0.2",
        "output_blocks.2.2",
    ]  # after every Swin BasicLayer
    inputs = text_inputs(model, 8, 16)
    context = seeded(2, 5, 16, seed=2)
    with torch.no_grad():
        assert torch.equal(model(**inputs, context=context), plain(**inputs))
    model(**inputs, context=context).square().mean().backward()
    assert model.middle_block[2].proj_out.weight.grad.abs().sum() > 0  # training moves it off the identity


def test_context_changes_the_output_and_padded_tokens_do_not():
    model = cross_model()
    perturb_cross_attention(model)
    inputs = text_inputs(model, 8, 16)
    context = seeded(2, 6, 16, seed=2)
    padding = torch.tensor([[False] * 4 + [True] * 2, [False] * 6])
    with torch.no_grad():
        base = model(**inputs, context=context, context_padding_mask=padding)
        other_text = context.clone()
        other_text[0, 1] += 1.0
        assert (model(**inputs, context=other_text, context_padding_mask=padding) - base)[0].abs().max() > 1e-4
        padded_changed = context.clone()
        padded_changed[0, 4:] = seeded(2, 16, seed=3) * 10
        torch.testing.assert_close(
            model(**inputs, context=padded_changed, context_padding_mask=padding), base, atol=1e-6, rtol=0
        )
        truncated = model(**{k: v[:1] for k, v in inputs.items()}, context=context[:1, :4])
        torch.testing.assert_close(truncated, base[:1], atol=1e-5, rtol=0)


def test_all_padding_context_adds_nothing_and_stays_finite():
    attention = CrossAttention(query_dim=8, context_dim=4, heads=2, dim_head=4, dropout=0.0)
    x, context = seeded(2, 5, 8), seeded(2, 3, 4, seed=1).requires_grad_()
    padding = torch.tensor([[True, True, True], [False, True, False]])
    out = attention(x, context, padding)
    assert torch.equal(out[0], torch.zeros(5, 8)) and out[1].abs().sum() > 0
    out.sum().backward()
    assert torch.isfinite(context.grad).all() and torch.equal(context.grad[0], torch.zeros(3, 4))


def test_cross_attention_key_layout_and_official_weight_loading():
    model = UNetModelSwin(**REDUCED, **TEXT)
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    block = "input_blocks.1.2.transformer_blocks.0"
    assert shapes[f"{block}.attn2.to_k.weight"] == (32, 16) and shapes[f"{block}.attn1.to_k.weight"] == (32, 32)
    assert shapes[f"{block}.ff.net.0.proj.weight"] == (256, 32) and shapes[f"{block}.ff.net.2.weight"] == (32, 128)
    assert shapes["middle_block.2.proj_out.weight"] == (64, 64, 1, 1)
    assert model.official_keys()["middle_block.3.out_layers.3.weight"] == "middle_block.2.out_layers.3.weight"
    official = set(OFFICIAL["same_size_lq"]["state_dict_shapes"])
    assert set(model.official_keys().values()) == official
    released = fill(UNetModelSwin(**REDUCED)).state_dict()
    del released["middle_block.2.in_layers.0.weight"]
    with pytest.raises(ValueError, match=r"released.pth: checkpoint does not match .*middle_block\.3\.in_layers"):
        model.load_resshift_state_dict(released, "released.pth")


@pytest.mark.parametrize("size", [(8, 32), (32, 128), (6, 20)])
def test_text_line_latents_keep_their_shape(size):
    model = cross_model(lq_size=16)  # LQ image at twice the latent's size, through the feature extractor
    perturb_cross_attention(model)
    batch = 1 if size == (32, 128) else 2
    with torch.no_grad():
        out = model(**text_inputs(model, *size, batch=batch), context=seeded(batch, 4, 16))
    assert out.shape == (batch, 3, *size) and torch.isfinite(out).all()


def test_size_and_input_errors_name_the_problem():
    plain = UNetModelSwin(**REDUCED)
    with pytest.raises(ValueError, match=r"latent size 7x32 must be a multiple of 2"):
        plain(seeded(1, 3, 7, 32), torch.zeros(1), lq=seeded(1, 3, 7, 32))
    with pytest.raises(ValueError, match=r"lq size \(8, 16\) should be \(8, 32\)"):
        plain(seeded(1, 3, 8, 32), torch.zeros(1), lq=seeded(1, 3, 8, 16))
    with pytest.raises(ValueError, match="cond_lq=True needs the lq image"):
        plain(seeded(1, 3, 8, 32), torch.zeros(1))
    with pytest.raises(ValueError, match=r"context given but .* no cross-attention"):
        plain(seeded(1, 3, 8, 32), torch.zeros(1), lq=seeded(1, 3, 8, 32), context=seeded(1, 4, 16))
    model = UNetModelSwin(**REDUCED, **TEXT)
    inputs = text_inputs(model, 8, 16, batch=1)
    with pytest.raises(ValueError, match=r"context_dim=16 needs context \(N, L, 16\)"):
        model(**inputs)
    with pytest.raises(ValueError, match=r"context has shape \(1, 4, 8\), expected \(N, L, 16\)"):
        model(**inputs, context=seeded(1, 4, 8))
    with pytest.raises(ValueError, match=r"context_padding_mask must be bool of shape \(1, 4\)"):
        model(**inputs, context=seeded(1, 4, 16), context_padding_mask=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="lq_size 12 must be image_size 8 times a power of 2"):
        UNetModelSwin(**{**REDUCED, "lq_size": 12})
    with pytest.raises(ValueError, match="not divisible by cross_attention_heads 3"):
        UNetModelSwin(**REDUCED, context_dim=16, cross_attention_heads=3)


def test_cond_mask_concatenates_a_mask_channel_to_the_lq_image():
    model = UNetModelSwin(**REDUCED, cond_mask=True).eval()
    assert model.input_blocks[0][0].weight.shape == (32, 3 + 4, 3, 3)  # official: latent + (lq, mask)
    inputs = text_inputs(model, 8, 16, batch=1)
    with pytest.raises(ValueError, match="cond_mask=True needs lq_mask"):
        model(**inputs)
    with torch.no_grad():
        assert model(**inputs, lq_mask=torch.ones(1, 1, 8, 16)).shape == (1, 3, 8, 16)
