"""ResShift's VQGAN-f4 autoencoder against numbers from the official code (tests/fixtures/vq_f4/README.md says how
they were made), the official full-configuration key layout, the pixel-space stand-in, and the release loader."""

import json
from pathlib import Path

import pytest
import torch

from stisr_lightning.models.autoencoders.vq_f4 import IdentityAutoencoder, VQModelTorch, load_official_vq_f4
from stisr_lightning.weights import load_state_dict_strict

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vq_f4"


def recipe_state(shapes: list[tuple[str, list[int]]]) -> dict[str, torch.Tensor]:
    """The fixture's weights, rebuilt from its key -> shape list with the recipe the fixture script used: one
    float64 normal stream (seed 0) in key order, scaled by fan_in ** -0.5 for >= 2-d tensors; 1-d tensors are
    0.1 * normal, plus 1 for norm weights."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes:
        value = torch.randn(shape, generator=generator, dtype=torch.float64)
        if len(shape) > 1:
            value = value * torch.Size(shape[1:]).numel() ** -0.5
        else:
            is_norm_weight = "norm" in key.rsplit(".", 2)[-2] and key.endswith(".weight")
            value = 0.1 * value + (1.0 if is_norm_weight else 0.0)
        state[key] = value.float()
    return state


@pytest.fixture(scope="module")
def official_reduced() -> dict:
    return torch.load(FIXTURES / "reduced_official.pt", weights_only=True)


@pytest.fixture(scope="module")
def default_model() -> VQModelTorch:
    torch.manual_seed(0)
    return VQModelTorch().eval()


@pytest.mark.parametrize("variant", ["no_level_attention", "level_attention"])
def test_reduced_config_reproduces_official_numbers(official_reduced, variant):
    fixture = official_reduced[variant]
    config = fixture["config"]
    model = VQModelTorch(
        embed_dim=config["embed_dim"],
        n_embed=config["n_embed"],
        z_channels=config["z_channels"],
        resolution=config["resolution"],
        ch=config["ch"],
        ch_mult=config["ch_mult"],
        num_res_blocks=config["num_res_blocks"],
        attn_resolutions=config["attn_resolutions"],
    ).eval()
    assert [(key, list(value.shape)) for key, value in model.state_dict().items()] == [
        (key, list(shape)) for key, shape in fixture["shapes"]
    ]
    load_state_dict_strict(model, recipe_state(fixture["shapes"]), "official reduced VQModelTorch")
    image = fixture["input"]  # (2, 3, 16, 32) in [-1, 1]
    with torch.no_grad():
        latent = model.encode(image)
        assert latent.shape == (2, 3, 8, 16)
        torch.testing.assert_close(latent, fixture["encoded"], atol=1e-5, rtol=0)
        assert torch.equal(model.quantize.codes(latent), fixture["indices"])
        torch.testing.assert_close(model.decode(latent), fixture["decoded"], atol=1e-5, rtol=0)
        unquantized = model.decode(latent, force_not_quantize=True)
        torch.testing.assert_close(unquantized, fixture["decoded_unquantized"], atol=1e-5, rtol=0)
        torch.testing.assert_close(model(image), fixture["forward"], atol=1e-5, rtol=0)
    # the straight-through quantizer passes gradients to the encoder exactly as the official one
    image = image.clone().requires_grad_(True)
    model(image).square().mean().backward()
    torch.testing.assert_close(image.grad, fixture["input_grad"], atol=1e-7, rtol=1e-4)


def test_default_config_has_official_full_layout(default_model):
    layout = json.loads((FIXTURES / "full_config_layout.json").read_text())
    assert {key: list(value.shape) for key, value in default_model.state_dict().items()} == layout["state_dict"]
    assert sum(parameter.numel() for parameter in default_model.parameters()) == layout["parameter_count"]
    assert (default_model.latent_channels, default_model.downsample_factor) == (3, 4)


def test_default_config_text_line_shapes(default_model):
    image = torch.rand(1, 3, 32, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latent = default_model.encode(image)
        assert latent.shape == (1, 3, 8, 32)
        assert default_model.decode(latent).shape == (1, 3, 32, 128)


def test_encode_rejects_sides_that_are_not_multiples_of_the_factor(default_model):
    with pytest.raises(ValueError, match="multiples of 4, got 30x128"):
        default_model.encode(torch.zeros(1, 3, 30, 128))


def test_quantized_decode_snaps_latents_to_codebook_entries():
    model = VQModelTorch(n_embed=4, ch=32, ch_mult=(1,), num_res_blocks=1)
    codebook = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -3.0]])
    model.quantize.embedding.weight.data.copy_(codebook)
    latent = torch.tensor([[0.9, 0.1, 0.0], [0.1, 1.6, 0.2], [0.0, 0.0, -1.0], [0.2, 0.2, 0.2]]).T.reshape(1, 3, 2, 2)
    assert model.quantize.codes(latent).flatten().tolist() == [1, 2, 0, 0]
    torch.testing.assert_close(model.quantize(latent), codebook[[1, 2, 0, 0]].T.reshape(1, 3, 2, 2))


def test_identity_autoencoder_round_trip():
    identity = IdentityAutoencoder()
    image = torch.rand(2, 3, 32, 128) * 2 - 1
    assert (identity.latent_channels, identity.downsample_factor) == (3, 1)
    assert identity.encode(image) is image
    assert identity.decode(identity.encode(image)) is image
    assert identity(image) is image
    assert list(identity.parameters()) == []


def test_load_official_vq_f4_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "autoencoder_vq_f4.pth"
    with pytest.raises(FileNotFoundError, match="autoencoder_vq_f4.pth"):
        load_official_vq_f4(missing)


def test_load_official_vq_f4_reads_the_released_layout(tmp_path, default_model):
    # the release is a plain fp16-or-fp32 state dict of VQModelTorch (ResShift's trainer loads it with strict=True)
    released = {key: value.half() for key, value in default_model.state_dict().items()}
    path = tmp_path / "autoencoder_vq_f4.pth"
    torch.save(released, path)
    loaded = load_official_vq_f4(path)
    assert isinstance(loaded, VQModelTorch)
    for key, value in loaded.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, released[key].float()), key


def test_load_official_vq_f4_rejects_another_layout(tmp_path, official_reduced):
    path = tmp_path / "reduced.pth"
    torch.save(recipe_state(official_reduced["no_level_attention"]["shapes"]), path)
    with pytest.raises(ValueError, match=r"reduced\.pth: encoder\.conv_in\.weight has shape \(32, 3, 3, 3\)"):
        load_official_vq_f4(path)
