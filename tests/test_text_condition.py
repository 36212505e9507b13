"""DiffTSR's MoM text transformer (TextResShift's C_cond) against numbers from the official code
(tests/fixtures/text_condition/README.md says how they were made), the official full-configuration key layout, the
confidence weighting of Eq. 4, and the DiffTSR checkpoint loader."""

import json
from pathlib import Path

import pytest
import torch

from stisr_lightning.models.blocks.text_condition import (
    MOM_TRANSFORMER_PREFIX,
    MoMTextTransformer,
    load_difftsr_mom_transformer,
)
from stisr_lightning.weights import load_state_dict_strict

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "text_condition"


def recipe_state(shapes: list[tuple[str, list[int]]]) -> dict[str, torch.Tensor]:
    """The fixture's weights, rebuilt from its key -> shape list with the recipe the fixture script used: one
    float64 normal stream (seed 0) in key order, scaled by fan_in ** -0.5 for >= 2-d tensors; 1-d tensors are
    0.1 * normal, plus 1 for (LayerNorm) weights."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes:
        value = torch.randn(shape, generator=generator, dtype=torch.float64)
        if len(shape) > 1:
            value = value * torch.Size(shape[1:]).numel() ** -0.5
        else:
            value = 0.1 * value + (1.0 if key.endswith(".weight") else 0.0)
        state[key] = value.float()
    return state


@pytest.fixture(scope="module")
def official_reduced() -> dict:
    return torch.load(FIXTURES / "reduced_official.pt", weights_only=True)


@pytest.fixture(scope="module")
def reduced_model(official_reduced) -> MoMTextTransformer:
    config = official_reduced["config"]
    model = MoMTextTransformer(vocab_size=config["vocab_size"], max_seq_len=config["max_seq_len"],
                              dim=config["n_embed"], depth=config["n_layer"]).eval()
    load_state_dict_strict(model, recipe_state(official_reduced["shapes"]), "official reduced BERTEmbedder")
    return model


def test_reduced_config_has_official_key_order(official_reduced, reduced_model):
    assert [(key, list(value.shape)) for key, value in reduced_model.state_dict().items()] == [
        (key, list(shape)) for key, shape in official_reduced["shapes"]
    ]


def test_reduced_config_reproduces_official_numbers(official_reduced, reduced_model):
    with torch.no_grad():
        embeddings = reduced_model(official_reduced["tokens"])
        short = reduced_model(official_reduced["short_tokens"])
        logits = reduced_model.token_logits(embeddings)
    assert embeddings.shape == (2, 8, 32) and short.shape == (2, 5, 32)
    torch.testing.assert_close(embeddings, official_reduced["embeddings"], atol=1e-5, rtol=0)
    torch.testing.assert_close(short, official_reduced["short_embeddings"], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, official_reduced["logits"], atol=1e-5, rtol=0)


def test_default_config_has_official_full_layout():
    layout = json.loads((FIXTURES / "official_full_layout.json").read_text())
    model = MoMTextTransformer()
    assert {key: list(value.shape) for key, value in model.state_dict().items()} == layout["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == layout["parameter_count"] == 4_302_736
    assert layout["checkpoint_prefix"] == MOM_TRANSFORMER_PREFIX


def test_all_ones_confidence_is_the_official_behaviour(official_reduced, reduced_model):
    tokens = official_reduced["tokens"]
    with torch.no_grad():
        weighted = reduced_model(tokens, torch.ones(tokens.shape))
    torch.testing.assert_close(weighted, official_reduced["embeddings"], atol=1e-5, rtol=0)
    assert torch.equal(weighted, reduced_model(tokens, None))


def test_confidence_scales_the_token_embedding_before_positions(official_reduced, reduced_model):
    tokens = official_reduced["tokens"]
    confidence = torch.ones(tokens.shape)
    confidence[0, 3] = 0.0
    confidence[1, 5] = 0.25
    with torch.no_grad():
        weighted = reduced_model(tokens, confidence)
        # by hand on the embedding layer: token (0, 3) becomes a zero content vector (its position stays),
        # token (1, 5) a quarter of its embedding
        features = reduced_model.token_emb.weight[tokens].clone()
        features[0, 3] = 0.0
        features[1, 5] *= 0.25
        by_hand = reduced_model.norm(reduced_model.attn_layers(features + reduced_model.pos_emb.emb.weight[:8]))
    torch.testing.assert_close(weighted, by_hand, atol=1e-6, rtol=0)
    # a changed confidence changes every position's feature through self-attention, not only its own
    unweighted = official_reduced["embeddings"]
    assert (weighted[0] - unweighted[0]).abs().amax(dim=-1).min() > 1e-4
    assert not torch.allclose(weighted, reduced_model(tokens, confidence * 0.9), atol=1e-4)


def test_confidence_gradient_reaches_the_ocr_scores(reduced_model):
    tokens = torch.tensor([[1, 2, 3]])
    confidence = torch.full((1, 3), 0.5, requires_grad=True)
    reduced_model(tokens, confidence).square().sum().backward()
    assert confidence.grad is not None and confidence.grad.abs().min() > 0


def test_input_errors(reduced_model):
    with pytest.raises(ValueError, match="length 9, but .* max_seq_len=8"):
        reduced_model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"confidence must have the tokens' shape \(1, 4\).*got \(1, 3\)"):
        reduced_model(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"tokens must be \(N, L\)"):
        reduced_model(torch.zeros(4, dtype=torch.long))


def test_english_vocabulary_is_a_constructor_argument():
    model = MoMTextTransformer(vocab_size=37).eval()
    assert model.token_emb.weight.shape == (37, 160) and model.to_logits.weight.shape == (37, 160)
    assert model(torch.randint(0, 37, (2, 24))).shape == (2, 24, 160)


@pytest.fixture(scope="module")
def official_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return {key: torch.randn_like(value) for key, value in MoMTextTransformer().state_dict().items()}


def released_layout(weights: dict[str, torch.Tensor]) -> dict:
    """`DiffTSR.ckpt` as `DiffTSR_pipline.load_model` reads it: one state dict per module."""
    mom = {f"Transformer.transformer.{key}": value for key, value in weights.items()}
    mom["first_embeder.weight"] = torch.zeros(4, 2)
    return {"IDM_Unet": {"input_blocks.0.0.weight": torch.zeros(2)}, "MoM_module": mom}


def lightning_layout(weights: dict[str, torch.Tensor]) -> dict:
    state = {f"{MOM_TRANSFORMER_PREFIX}{key}": value for key, value in weights.items()}
    return {"state_dict": {**state, "IDM_Unet.out.0.weight": torch.zeros(2)}, "epoch": 3}


@pytest.mark.parametrize("layout", [released_layout, lightning_layout])
def test_loader_reads_difftsr_checkpoints(tmp_path, official_weights, layout):
    path = tmp_path / "DiffTSR.ckpt"
    torch.save(layout(official_weights), path)
    model = load_difftsr_mom_transformer(path)
    assert all(torch.equal(value, official_weights[key]) for key, value in model.state_dict().items())
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.requires_grad for p in load_difftsr_mom_transformer(path, freeze=False).parameters())


def test_loader_errors(tmp_path, official_weights):
    missing = tmp_path / "absent.ckpt"
    with pytest.raises(FileNotFoundError, match="absent.ckpt"):
        load_difftsr_mom_transformer(missing)
    no_mom = tmp_path / "vae_only.ckpt"
    torch.save({"VAE_model": {"decoder.conv_in.weight": torch.zeros(2)}}, no_mom)
    with pytest.raises(ValueError, match=r"vae_only.ckpt: no key starts with 'MoM_module.Transformer.transformer.'"):
        load_difftsr_mom_transformer(no_mom)
    english = tmp_path / "english.ckpt"
    weights = {**official_weights, "token_emb.weight": torch.zeros(37, 160)}
    torch.save(released_layout(weights), english)
    with pytest.raises(ValueError, match=r"english.ckpt: token_emb.weight has shape \(37, 160\)"):
        load_difftsr_mom_transformer(english)
    partial = tmp_path / "partial.ckpt"
    torch.save(released_layout({k: v for k, v in official_weights.items() if k != "norm.bias"}), partial)
    with pytest.raises(ValueError, match=r"partial.ckpt: .*missing 1: \[norm.bias\]"):
        load_difftsr_mom_transformer(partial)
