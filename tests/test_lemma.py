"""LEMMA generator: shapes, every ablation switch of Tables 1, 2, 4, 7 and the TopK supplement, LEM internals,
official key layout, STN in training only. ABINet is replaced by a small fake prior."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fakes import OFFICIAL_CHECKPOINTS, random_official_state
from stisr_lightning.models.blocks.adafm import ConcatFusion, GlobalDepthwiseConv
from stisr_lightning.models.blocks.lemma_guidance import GuidanceGenerator, compress_attention, select_top_k
from stisr_lightning.models.generators.lemma import LEMMA, load_official_lemma
from stisr_lightning.models.recognizers.prior import TextPrior

OFFICIAL_KEYS = OFFICIAL_CHECKPOINTS / "lemma.json"
ABINET_PARAMETERS = 23_547_461 + 12_647_461
T, CLASSES = 26, 37


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The test machine is shared; one intra-op thread is several times faster than two contending ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakePrior(nn.Module):
    """Stands in for ABINetPrior: fixed random attention logits sharpened by a learnable scale; records its input."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("attention_logits", 5 * torch.randn(1, T, 16 * 64, generator=generator))
        self.register_buffer("logits", torch.randn(1, T, CLASSES, generator=generator))
        self.seen: torch.Tensor | None = None

    def forward(self, lr_rgb: torch.Tensor) -> TextPrior:
        self.seen = lr_rgb
        batch = lr_rgb.shape[0]
        attention = torch.softmax(self.attention_logits * self.scale, dim=-1).view(1, T, 16, 64)
        attention = attention.expand(batch, -1, -1, -1)
        logits = (self.logits * self.scale).expand(batch, -1, -1)
        lengths = torch.tensor([5, T, 2, 11])[torch.arange(batch) % 4]
        return TextPrior(attention, logits, logits + 1.0, lengths)


def hand_prior(batch: int = 2, seed: int = 0) -> TextPrior:
    generator = torch.Generator().manual_seed(seed)
    attention = torch.softmax(3 * torch.randn(batch, T, 16 * 64, generator=generator), -1).view(batch, T, 16, 64)
    logits = torch.randn(batch, T, CLASSES, generator=generator)
    return TextPrior(attention, logits, logits.flip(-1), torch.tensor([4, 9, 26, 2])[:batch])


def test_default_output_shape_range_and_prior_gradient():
    model = LEMMA(FakePrior(), use_stn=False).train()
    sr, prior = model.forward_with_prior(torch.rand(2, 4, 16, 64))
    assert sr.shape == (2, 4, 32, 128)
    assert sr.abs().max() < 1  # tanh, no clamp
    assert prior.attention.shape == (2, T, 16, 64)
    sr.square().mean().backward()
    assert model.position_prior.scale.grad is not None and model.position_prior.scale.grad.abs() > 0


def test_parameter_count_matches_official_minus_abinet():
    official = json.loads(OFFICIAL_KEYS.read_text())["num_parameters"]
    model = LEMMA(FakePrior())
    ours = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("position_prior."))
    assert ours == official - ABINET_PARAMETERS == 3_559_619


def test_unidirectional_alignment_is_parameter_matched():
    def count(alignment: str) -> int:
        return sum(p.numel() for p in LEMMA(FakePrior(), alignment=alignment).guidanceGen.parameters())

    bidirectional, unidirectional, none = count("bidirectional"), count("unidirectional"), count("none")
    assert unidirectional == bidirectional  # 6 stacked second-level layers vs 3 + 3 (Table 2)
    assert none < bidirectional


VARIANTS = {
    # Table 1: cha-attn x feat-select
    "t1_none": dict(char_location_attention=False, feature_selection=False),
    "t1_select": dict(char_location_attention=False),
    "t1_attn": dict(feature_selection=False),
    "default": dict(),
    # Table 2: NoA / UDA (BDA = default)
    "t2_noa": dict(alignment="none"),
    "t2_uda": dict(alignment="unidirectional"),
    # Table 4: LEM / MAM / AdaFM
    "t4_plain": dict(location_enhancement=False, multimodal_alignment=False, fusion="concat"),
    "t4_lem": dict(multimodal_alignment=False, fusion="concat"),
    "t4_lem_mam": dict(fusion="concat"),
    # Table 7: ExpsConv x Pix2Reg
    "t7_none": dict(expansion_conv=False, pixel_to_region=False),
    "t7_pix2reg": dict(expansion_conv=False),
    "t7_expansion": dict(pixel_to_region=False),
    # supplement: TopK
    "topk_300": dict(topk=300),
    "topk_700": dict(topk=700),
    "topk_1024": dict(topk=1024),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_ablation_variant_trains(name):
    torch.manual_seed(0)
    model = LEMMA(FakePrior(), num_blocks=1, use_stn=False, **VARIANTS[name]).train()
    sr = model(torch.rand(2, 4, 16, 64))
    assert sr.shape == (2, 4, 32, 128) and torch.isfinite(sr).all()
    sr.square().mean().backward()
    no_gradient = [n for n, p in model.named_parameters() if p.grad is None and not n.startswith("position_prior.")]
    assert no_gradient == []  # modules a variant does not use are not built
    uses_prior = VARIANTS[name].get("location_enhancement", True) or VARIANTS[name].get("multimodal_alignment", True)
    assert (model.position_prior.scale.grad is not None) == uses_prior


def test_switches_build_the_modules_they_name():
    guidance = LEMMA(FakePrior(), num_blocks=1).guidanceGen
    assert guidance.DWC.kernel_size == (3, 3) and guidance.num_selected == 500
    assert len(guidance.text_decoder.layers) == len(guidance.sematic_decoder.layers) == 3
    assert LEMMA(FakePrior(), num_blocks=1, pixel_to_region=False).guidanceGen.DWC.kernel_size == (1, 1)
    assert not hasattr(LEMMA(FakePrior(), num_blocks=1, expansion_conv=False).guidanceGen, "attn_conv")
    assert LEMMA(FakePrior(), num_blocks=1, feature_selection=False).guidanceGen.num_selected == 1024
    uda = LEMMA(FakePrior(), num_blocks=1, alignment="unidirectional").guidanceGen
    assert not hasattr(uda, "text_decoder") and len(uda.sematic_decoder.layers) == 6
    assert isinstance(LEMMA(FakePrior(), num_blocks=1, fusion="concat").block2.affine, ConcatFusion)
    with pytest.raises(ValueError, match="topk"):
        LEMMA(FakePrior(), topk=1025)
    with pytest.raises(ValueError, match="alignment"):
        LEMMA(FakePrior(), alignment="both")


def test_compression_is_the_max_over_valid_steps_only():
    attention = torch.zeros(2, T, 16, 64)
    attention[0, 1, 3, 5] = 0.7  # valid (length 3)
    attention[0, 2, 3, 5] = 0.4
    attention[0, 3, 0, 0] = 0.9  # padding step: ignored
    attention[1, 25, 1, 1] = 0.2  # valid (length 26)
    score = compress_attention(attention, torch.tensor([3, 26]))
    expected = torch.zeros(2, 1, 16, 64)
    expected[0, 0, 3, 5], expected[1, 0, 1, 1] = 0.7, 0.2
    assert torch.equal(score, expected)


def test_topk_picks_exactly_the_largest_compressed_scores():
    attention = torch.full((2, T, 16, 64), 1e-4)
    chosen = [torch.tensor([7, 100, 513, 1023, 64]), torch.tensor([0, 1, 2, 900, 333])]
    for sample, positions in enumerate(chosen):
        step_maps = attention[sample, :2].view(2, -1)
        step_maps[0, positions[:3]] = torch.tensor([0.5, 0.4, 0.3])
        step_maps[1, positions[3:]] = torch.tensor([0.2, 0.1])
    attention[:, 5:].view(2, T - 5, -1)[:, :, 10] = 0.9  # beyond every length: must not be picked
    score = compress_attention(attention, torch.tensor([2, 5])).flatten(1)
    index = select_top_k(score, 5)
    assert [set(row.tolist()) for row in index] == [set(p.tolist()) for p in chosen]

    guidance = GuidanceGenerator(topk=5).eval()
    tokens = torch.randn(1024, 2, 64)
    selected, padded = guidance.select(tokens, score)
    for sample, positions in enumerate(chosen):
        assert torch.equal(selected[:, sample], tokens[index[sample], sample])
        assert torch.equal(padded[positions, sample], tokens[positions, sample])
        outside = torch.ones(1024, dtype=torch.bool)
        outside[positions] = False
        assert padded[outside, sample].abs().sum() == 0


def test_lem_ignores_attention_beyond_the_predicted_length():
    torch.manual_seed(0)
    generator = GuidanceGenerator(multimodal_alignment=False).eval()
    features = torch.randn(2, 64, 16, 64)
    prior = hand_prior()
    changed = torch.rand_like(prior.attention)
    steps = torch.arange(T)[None, :, None, None]
    beyond = steps >= prior.lengths[:, None, None, None]
    moved = TextPrior(torch.where(beyond, changed, prior.attention), prior.vision_logits, prior.language_logits,
                      prior.lengths)
    enhanced, score = generator.enhance_location(features, prior)
    enhanced_moved, score_moved = generator.enhance_location(features, moved)
    assert torch.equal(score, score_moved) and torch.allclose(enhanced, enhanced_moved)
    assert torch.allclose(generator(features, prior), generator(features, moved))
    within = TextPrior(torch.where(beyond, prior.attention, changed), prior.vision_logits, prior.language_logits,
                       prior.lengths)
    assert not torch.allclose(generator(features, prior), generator(features, within))


def test_guidance_modalities_of_the_ablations():
    torch.manual_seed(0)
    features, other = torch.randn(2, 2, 64, 16, 64).unbind(0)
    prior = hand_prior()
    text_only = GuidanceGenerator(alignment="none").eval()  # NoA: image features play no part
    assert torch.allclose(text_only(features, prior), text_only(other, prior))
    image_only = GuidanceGenerator(multimodal_alignment=False).eval()  # without MAM: zero outside the TopK
    assert (image_only(features, prior).abs().sum(1) > 0).sum(dim=(1, 2)).tolist() == [500, 500]
    plain = GuidanceGenerator(location_enhancement=False, multimodal_alignment=False)
    assert torch.equal(plain(features, prior), features)


def test_global_depthwise_conv_is_a_per_channel_weighted_sum():
    conv = GlobalDepthwiseConv(3, (16, 64))
    x = torch.randn(2, 3, 16, 64)
    expected = (x * conv.weight[:, 0]).sum(dim=(2, 3)) + conv.bias
    assert torch.allclose(conv(x).flatten(1), expected, atol=1e-5)


def test_stn_and_prior_input_in_training_and_eval():
    model = LEMMA(FakePrior(), num_blocks=1)
    calls = []
    model.stn_head.register_forward_hook(lambda *_: calls.append(1))
    lr = torch.rand(2, 4, 16, 64, requires_grad=True)
    model.eval()
    with torch.no_grad():
        model(lr)
    assert calls == [] and torch.equal(model.position_prior.seen, lr[:, :3])
    model.train()
    model(lr)
    assert calls == [1]
    assert not model.position_prior.seen.requires_grad  # detached, as in the official code
    assert not torch.equal(model.position_prior.seen, lr[:, :3])  # rectified (init warp is not the identity)


def official_state(prior: nn.Module) -> dict[str, torch.Tensor]:
    state = {key: value for key, value in random_official_state("lemma").items()
             if not key.startswith("position_prior.")}
    state.update({f"position_prior.{k}": v for k, v in prior.state_dict().items()})
    return state


def test_official_key_layout_loads_strictly():
    prior = FakePrior()
    state = official_state(prior)
    assert "guidanceGen.text_pos.pe" in state and "guidanceGen.select_pos.pe" in state
    model = load_official_lemma({"state_dict_G": state}, prior)
    assert model.num_blocks == 5 and model.scale_factor == 2 and model.use_stn
    loaded = model.state_dict()
    for key in ("guidanceGen.DWC.weight", "block6.affine.channel_attn.0.weight", "block4.gru2.gru.weight_hh_l0",
                "guidanceGen.sematic_decoder.layers.2.norm3.bias", "tps.inverse_kernel", "block8.1.weight"):
        assert torch.equal(loaded[key], state[key])
    prefixed = {f"module.{k}": v for k, v in state.items()}
    assert torch.equal(load_official_lemma(prefixed, FakePrior()).block1[0].weight, state["block1.0.weight"])
    del state["guidanceGen.attn_conv.6.weight"]
    with pytest.raises(ValueError, match="missing 1"):
        load_official_lemma(state, FakePrior())


def test_bad_prior_shapes_raise_one_line_errors():
    generator = GuidanceGenerator().eval()
    features, prior = torch.randn(2, 64, 16, 64), hand_prior()
    with pytest.raises(ValueError, match="lengths must be"):
        generator(features, TextPrior(prior.attention, prior.vision_logits, prior.language_logits, prior.lengths[:1]))
    with pytest.raises(ValueError, match="LR grid"):
        generator(features, TextPrior(prior.attention[..., :32], prior.vision_logits, prior.language_logits,
                                      prior.lengths))
    with pytest.raises(ValueError, match="LR input"):
        LEMMA(FakePrior(), num_blocks=1)(torch.rand(1, 4, 32, 128))


def test_with_the_abinet_prior_the_whole_official_checkpoint_layout_loads():
    from stisr_lightning.models.recognizers.abinet import ABINetPrior

    official = json.loads(OFFICIAL_KEYS.read_text())
    state = random_official_state("lemma")
    model = load_official_lemma({"state_dict_G": state}, ABINetPrior())
    assert sum(p.numel() for p in model.parameters()) == official["num_parameters"]
    loaded = model.position_prior.state_dict()["language.cls.weight"]
    assert torch.equal(loaded, state["position_prior.language.cls.weight"])
