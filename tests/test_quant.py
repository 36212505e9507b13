import itertools
import math

import pytest
import torch
from torch import nn

from stisr_lightning.models.recognizers.stt_transformer import MultiHeadedAttention, PositionwiseFeedForward
from stisr_lightning.quant import QuantizationSpec, quantize_model, select_layers, theoretical_size_bits
from stisr_lightning.quant.aciq import (
    aciq_range,
    activation_statistics,
    allocate_bits,
    channel_range,
    optimal_alpha,
    quantize_dequantize,
    quantize_weight,
)

# The official int_quantizer.py tables (alpha / b for Laplace, alpha / sigma for Gaussian), keyed by bits.
LAPLACE = {0: 1.05, 1: 1.86, 2: 2.83, 3: 3.89, 4: 5.03, 5: 6.2, 6: 7.41, 7: 8.64, 8: 9.89}
LAPLACE_HALF = {0: 1.86, 1: 2.83, 2: 3.89, 3: 5.02, 4: 6.2, 5: 7.41, 6: 8.64, 7: 9.89, 8: 11.16}
GAUSS = {1: 1.24, 2: 1.71, 3: 2.15, 4: 2.55, 5: 2.93, 6: 3.28, 7: 3.61, 8: 3.92}
GAUSS_HALF = {1: 1.71, 2: 2.15, 3: 2.55, 4: 2.93, 5: 3.28, 6: 3.61, 7: 3.92, 8: 4.2}
# The scipy solver output printed in the same file's comments, for 2..8 bits (scipy's default tolerance: ~1e-6).
LAPLACE_SOLVED = [2.83068299, 3.89722946, 5.02864014, 6.20476633, 7.41312622, 8.64561995, 9.89675982]
GAUSS_SOLVED = [1.71063519, 2.15159277, 2.55913646, 2.93620062, 3.28691474, 3.6151146, 3.92403714]


@pytest.mark.parametrize(
    "table, distribution, half_range",
    [
        (LAPLACE, "laplace", False),
        (LAPLACE_HALF, "laplace", True),
        (GAUSS, "gaussian", False),
        (GAUSS_HALF, "gaussian", True),
    ],
)
def test_solved_alpha_matches_the_official_table(table, distribution, half_range):
    for bits, value in table.items():
        precision = 10.0 ** -len(str(value).split(".")[1])  # 6.2 and 4.2 are given to one decimal
        assert abs(optimal_alpha(bits, distribution, half_range) - value) < precision, (bits, value)


def test_solved_alpha_matches_the_official_solver():
    for bits, laplace, gauss in zip(range(2, 9), LAPLACE_SOLVED, GAUSS_SOLVED):
        assert optimal_alpha(bits, "laplace") == pytest.approx(laplace, abs=1e-5)
        assert optimal_alpha(bits, "gaussian") == pytest.approx(gauss, abs=1e-5)


def test_quantize_dequantize_by_hand():
    x = torch.tensor([-1.0, 0.0, 0.4, 1.6, 2.5, 3.0, 7.0])
    # 2 bits over [0, 3]: step 1, clamp outside, halves round away from zero like the official kernel.
    assert quantize_dequantize(x, 0.0, 3.0, 2).tolist() == [0, 0, 0, 2, 3, 3, 3]
    # over [-1, 3]: step 4/3; the zero point round(0.75) = 1 keeps 0 exact and moves the grid to -4/3 + k * 4/3.
    expected = torch.tensor([-4, 0, 0, 4, 8, 8, 8]) / 3
    torch.testing.assert_close(quantize_dequantize(x, -1.0, 3.0, 2), expected)


def test_weights_use_per_output_channel_min_max():
    w = torch.tensor([[0.0, 0.4, 1.6, 3.0], [-1.0, 0.2, 1.4, 2.0]])
    lo, hi = channel_range(w)
    assert lo.tolist() == [[0.0], [-1.0]] and hi.tolist() == [[3.0], [2.0]]
    w_q, bits = quantize_weight(w, 2)
    assert w_q.tolist() == [[0, 0, 2, 3], [-1, 0, 1, 2]] and bits.tolist() == [2, 2]
    per_tensor, _ = quantize_weight(w, 2, per_channel=False)
    torch.testing.assert_close(per_tensor, torch.tensor([[0, 0, 4, 8], [-4, 0, 4, 8]]) / 3)


def test_bit_allocation_follows_eq_11():
    # bins proportional to std^(2/3): [1, 4] / 5 * (2 * 2**2) = [1.6, 6.4] -> ceil(log2) = [1, 3], mean 2.
    assert allocate_bits(torch.tensor([1.0, 8.0]), 2).tolist() == [1, 3]
    assert allocate_bits(torch.ones(5), 3).tolist() == [3] * 5
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.1] * 4 + [10.0] * 4)[:, None]
    _, bits = quantize_weight(w, 4, bit_allocation=True)
    assert bits.mean() == 4 and (bits[4:] > bits[:4]).all()
    assert quantize_weight(w, 5, bit_allocation=True)[1].tolist() == [5] * 8  # officially only at <= 4 bits


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


def _net_and_input():
    torch.manual_seed(0)
    return Net().eval(), torch.randn(16, 3, 4, 4)


@pytest.mark.parametrize("activations", [False, True])
def test_output_error_falls_with_bits(activations):
    model, x = _net_and_input()
    reference = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    errors = []
    with torch.no_grad():
        for bits in range(2, 9):
            model.load_state_dict(state)
            report = quantize_model(model, QuantizationSpec(bits, quantize_activations=activations), lambda: model(x))
            errors.append(((model(x) - reference).norm() / reference.norm()).item())
            report.remove_hooks()
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    # ACIQ's wide 8-bit clipping (9.89 b) costs ~1% per quantized activation; weights alone far less.
    assert errors[-1] < (0.02 if activations else 0.01) and errors[0] > 0.3, errors


def test_bias_and_variance_correction_restore_channel_moments():
    model, _ = _net_and_input()
    conv = model.body[0]
    w = conv.weight.detach().clone()
    quantize_model(model, QuantizationSpec(2, ("conv",), quantize_activations=False, variance_correction=True))
    flat, flat_q = w.flatten(1), conv.weight.detach().flatten(1)
    torch.testing.assert_close(flat_q.mean(1), flat.mean(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(flat_q.std(1), flat.std(1), atol=1e-5, rtol=1e-4)

    model, _ = _net_and_input()
    quantize_model(model, QuantizationSpec(2, ("conv",), quantize_activations=False, bias_correction=False))
    assert (model.body[0].weight.detach().flatten(1).mean(1) - flat.mean(1)).abs().max() > 1e-3


class Zoo(nn.Module):
    """Every layer type, with the TBSRN attention / feed-forward blocks and an STN-like named block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        self.stn_head = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 6))
        self.attn = nn.MultiheadAttention(8, 2)
        self.multihead = MultiHeadedAttention(2, 8)
        self.pff = PositionwiseFeedForward(8, 16)
        self.up = nn.ConvTranspose2d(4, 2, 2)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 3)


def _names(**spec):
    return select_layers(Zoo(), QuantizationSpec(8, **spec))


def test_layer_types_and_name_patterns_select_exactly():
    assert _names(layer_types=("conv",)) == ["stem", "body.0", "body.2", "up"]
    assert _names(layer_types=("linear",)) == ["stn_head.0", "stn_head.1", "fc"]  # not attn.out_proj nor pff.w_1
    assert _names(layer_types=("attention",)) == ["attn", "multihead"]
    assert _names(layer_types=("feed_forward",)) == ["pff"]
    assert _names(layer_types=("conv",), include=("body.*",), exclude=("body.2",)) == ["body.0"]
    assert _names(layer_types=("linear",), include=("stn_head.*",)) == ["stn_head.0", "stn_head.1"]


def test_each_weight_is_quantized_once_and_biases_stay_float():
    model = Zoo()
    spec = QuantizationSpec(8, ("linear", "attention"), quantize_activations=False)
    report = quantize_model(model, spec)
    assert sorted(report.weight_bits) == sorted(
        ["stn_head.0.weight", "stn_head.1.weight", "fc.weight", "attn.in_proj_weight", "attn.out_proj.weight"]
        + [f"multihead.linears.{i}.weight" for i in range(4)]
        + ["multihead.compress_attention_linear.weight"]
    )
    assert report.layers == ["stn_head.0", "stn_head.1", "attn", "multihead", "fc"]
    expected = sum(p.numel() for n, p in model.named_parameters() if n in report.weight_bits)
    assert report.quantized_parameters == expected
    assert report.size_bits == 8 * expected + 32 * (report.total_parameters - expected)


def test_transposed_conv_channels_are_its_output_channels():
    model = Zoo()
    w = model.up.weight.detach().clone()  # (in 4, out 2, 2, 2)
    quantize_model(model, QuantizationSpec(2, ("conv",), include=("up",), quantize_activations=False))
    means = [t.transpose(0, 1).flatten(1).mean(1) for t in (model.up.weight.detach(), w)]
    torch.testing.assert_close(*means, atol=1e-6, rtol=0)


def test_theoretical_size_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(4, 3), nn.LayerNorm(3))
    # conv weight 18 and linear weight 12 at 4 bits; conv bias 2, linear bias 3, norm 3 + 3 at 32 bits.
    assert theoretical_size_bits(model, {"0.weight": 4, "1.weight": 4}) == 18 * 4 + 12 * 4 + (2 + 3 + 6) * 32
    report = quantize_model(model, QuantizationSpec(4, ("conv", "linear"), quantize_activations=False))
    assert report.size_bits == 280 + 6 * 32 and report.quantized_parameters == 30 and report.total_parameters == 41
    with pytest.raises(ValueError, match="nope.weight"):
        theoretical_size_bits(model, {"nope.weight": 4})


def test_all_parameters_quantizes_biases_and_norms_per_tensor():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([0.1, 0.7]))
        model[1].bias.copy_(torch.tensor([0.0, 0.3]))
    spec = QuantizationSpec(2, ("conv", "norm"), all_parameters=True, quantize_activations=False)
    report = quantize_model(model, spec)
    assert sorted(report.weight_bits) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    # conv 18 + 2, norm 2 + 2 at 2 bits; the unselected linear (12 + 3) at 32
    assert report.size_bits == (18 + 2 + 2 + 2) * 2 + 15 * 32
    # a vector's range is its own min/max: two elements lie exactly on the 2-bit grid's ends
    torch.testing.assert_close(model[0].bias.detach(), torch.tensor([0.1, 0.7]))
    torch.testing.assert_close(model[1].bias.detach(), torch.tensor([0.0, 0.3]))
    torch.testing.assert_close(model[1].weight.detach(), torch.ones(2))  # constant vector: unchanged


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bits": 1}, "bits=1"),
        ({"bits": 9}, "bits=9"),
        ({"bits": 4, "activation_bits": 12}, "activation_bits=12"),
        ({"bits": 4, "layer_types": ("conv", "lstm")}, "lstm"),
        ({"bits": 4, "distribution": "cauchy"}, "cauchy"),
    ],
)
def test_invalid_specs_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantizationSpec(**kwargs)


def test_nothing_matched_names_the_selection():
    with pytest.raises(ValueError, match=r"no layer matches .*include=\('head\.\*',\)"):
        quantize_model(Zoo(), QuantizationSpec(8, ("conv",), include=("head.*",)))


def _capture_input(module):
    seen = []
    module.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    return seen


def test_activations_are_clipped_with_calibrated_aciq_range():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1000, 4))
    calibration = torch.distributions.Laplace(0.5, 2.0).sample((1, 1000))
    report = quantize_model(model, QuantizationSpec(2), lambda: model(calibration))
    seen = _capture_input(model[0])  # registered after the quantizing hook: sees its output

    mean = calibration.mean()
    b = (calibration - mean).abs().mean()
    alpha = optimal_alpha(2) * b
    lo, hi = report.activation_ranges["0:input"]
    assert calibration.min() < mean - alpha  # so the range is mean -/+ alpha
    assert lo == pytest.approx((mean - alpha).item(), rel=1e-5) and hi == pytest.approx((mean + alpha).item(), rel=1e-5)

    x = torch.zeros(1, 1000)
    x[0, 0], x[0, 1] = 1e6, -1e6
    model(x)
    step = 2 * alpha.item() / 3
    top, bottom = seen[0][0, 0].item(), seen[0][0, 1].item()
    assert top == quantize_dequantize(torch.tensor(1e6), lo, hi, 2).item()
    assert hi - step / 2 <= top <= hi + step / 2 and lo - step / 2 <= bottom <= lo + step / 2
    assert seen[0][0, 2:].eq(0).all()  # zero is exactly representable


def test_non_negative_inputs_use_half_range_and_gaussian_prior():
    model = nn.Sequential(nn.ReLU(), nn.Linear(64, 2))
    calibration = torch.rand(8, 64)
    report = quantize_model(model, QuantizationSpec(3, distribution="gaussian"), lambda: model(calibration))
    stats = activation_statistics(calibration)
    alpha = optimal_alpha(3, "gaussian", half_range=True) * calibration.std()
    assert report.activation_ranges["1:input"] == pytest.approx((0.0, (calibration.mean() + alpha).item()), rel=1e-5)
    by_hand = [t.item() for t in aciq_range(stats, 3, "gaussian", half_range=True)]
    assert by_hand == pytest.approx(report.activation_ranges["1:input"])


def test_multihead_attention_inputs_are_quantized():
    torch.manual_seed(0)
    model = Zoo().eval()
    x = torch.randn(5, 2, 8)
    reference = model.attn(x, x, x)[0]
    report = quantize_model(model, QuantizationSpec(8, ("attention",)), lambda: model.attn(x, x, x))
    assert set(report.activation_ranges) == {"attn:query", "attn:key", "attn:value"}
    seen = []
    model.attn.register_forward_pre_hook(lambda m, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)
    positional = model.attn(x, x, x)[0]
    keywords = model.attn(query=x, key=x, value=x)[0]
    (query, key, value), _ = seen[0]
    assert query is key is value and not torch.equal(query, x)  # one tensor, quantized once
    assert not torch.equal(seen[1][1]["query"], x)
    torch.testing.assert_close(positional, keywords)
    assert 0 < (positional - reference).abs().max() < 0.02


def test_without_calibration_ranges_come_from_each_batch():
    model, x = _net_and_input()
    reference = model(x)
    report = quantize_model(model, QuantizationSpec(8))
    assert report.activation_ranges == {}
    assert 0 < (model(x) - reference).abs().max() < 0.05 * reference.abs().max()
    report.remove_hooks()
    assert not model.fc._forward_pre_hooks and math.isfinite(report.weight_mse["fc.weight"])
