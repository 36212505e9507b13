"""Post-training ACIQ quantization of an `nn.Module` with the layer-type selection of the EDSR/TBSRN + CDistNet paper.

Units: `named_modules` is walked top-down and the outermost module of a type in `LAYER_TYPES` claims its subtree,
so the `nn.Linear`s inside an attention or feed-forward block (e.g. `nn.MultiheadAttention.out_proj`) belong to
"attention" / "feed_forward", never to "linear" ("multi-head attention layer" is its own type in the paper), and no
weight is quantized twice. A unit's quantized tensors are its parameters named `*weight` with >= 2 dims (conv and
linear kernels, `in_proj_weight`, `q/k/v_proj_weight`, `out_proj.weight`); biases and norm scales stay 32-bit.
Blocks that are not a type of their own (STN fully connected layers, EDSR head/body) are picked by name with
`include`, e.g. `QuantizationSpec(8, ("linear",), include=("stn_head.*",))`.

Activations are fake-quantized per tensor at the input of each module that owns a quantized weight (for
`nn.MultiheadAttention`: query, key and value; the input of its `out_proj` is computed functionally and stays float).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatch

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from stisr_lightning.models.recognizers.cdistnet_blocks import MultiheadAttention as CDistNetAttention
from stisr_lightning.models.recognizers.stt_transformer import MultiHeadedAttention, PositionwiseFeedForward
from stisr_lightning.quant.aciq import (
    DISTRIBUTIONS,
    STATISTICS,
    aciq_range,
    activation_statistics,
    correct_weight,
    quantize_dequantize,
    quantize_weight,
)

LAYER_TYPES: dict[str, tuple[type, ...]] = {
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d),
    "linear": (nn.Linear,),
    "attention": (nn.MultiheadAttention, MultiHeadedAttention, CDistNetAttention),
    "feed_forward": (PositionwiseFeedForward,),
    "norm": (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm),
}
"""Layer types of the paper; add a model's own attention / feed-forward classes here to make them one unit."""

FLOAT_BITS = 32
BIT_RANGE = range(2, 9)


@dataclass(frozen=True)
class QuantizationSpec:
    """What to quantize and how; the flags mirror the official command line (-pcq_w, -bcw, -vcw, -baw).

    Activations use ACIQ clipping per tensor; bit allocation is per weight channel and, as officially, only at
    <= 4 bits. Lists (e.g. from YAML) are accepted and stored as tuples.
    """

    bits: int
    layer_types: tuple[str, ...] = ("conv", "linear", "attention")
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    quantize_activations: bool = True
    activation_bits: int | None = None
    distribution: str = "laplace"
    per_channel_weights: bool = True
    bias_correction: bool = True
    variance_correction: bool = False
    bit_allocation: bool = False
    all_parameters: bool = False
    """Quantize every parameter of a selected unit (biases and norm scales too, per tensor), not only its weight
    tensors. The EDSR + CDistNet paper's reported sizes imply it: its EDSR SR row equals every parameter of the
    head, the body and the STN at 4 bits, the tail at 32."""

    def __post_init__(self) -> None:
        for name in ("layer_types", "include", "exclude"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("bits", "activation_bits"):
            value = getattr(self, name)
            if (value is not None or name == "bits") and value not in BIT_RANGE:
                raise ValueError(f"QuantizationSpec: {name}={value!r} is not in 2..8")
        unknown = [t for t in self.layer_types if t not in LAYER_TYPES]
        if unknown or not self.layer_types:
            raise ValueError(f"QuantizationSpec: unknown layer type(s) {unknown}; known: {sorted(LAYER_TYPES)}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"QuantizationSpec: distribution={self.distribution!r}; expected one of {DISTRIBUTIONS}")
        if self.bit_allocation and not self.per_channel_weights:
            raise ValueError("QuantizationSpec: bit_allocation needs per_channel_weights=True")


@dataclass
class QuantizationReport:
    """What `quantize_model` did; `size_bits` is the paper's theoretical model size."""

    spec: QuantizationSpec
    layers: list[str]
    quantized_parameters: int
    total_parameters: int
    size_bits: int
    weight_bits: dict[str, float]
    """Quantized parameter name -> bits per element (the mean over channels under bit allocation)."""
    weight_mse: dict[str, float]
    activation_ranges: dict[str, tuple[float, float]]
    """Calibrated clipping range per "module:slot"; empty without calibration (ranges are then per batch)."""
    handles: list[RemovableHandle] = field(default_factory=list, repr=False)

    def remove_hooks(self) -> None:
        """Stop fake-quantizing activations (weights stay quantized: reload them to undo)."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _units(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, type) of every outermost typed module; pre-order keeps a claimed subtree contiguous."""
    units, claimed = [], None
    for name, module in model.named_modules():
        if claimed is not None and (claimed == "" or name.startswith(claimed + ".")):
            continue
        claimed = None
        kind = next((k for k, classes in LAYER_TYPES.items() if isinstance(module, classes)), None)
        if kind is not None:
            units.append((name, module, kind))
            claimed = name
    return units


def select_layers(model: nn.Module, spec: QuantizationSpec) -> list[str]:
    """Names of the units that `spec` quantizes (type selected, name matches `include` and no `exclude`)."""
    return [
        name
        for name, _, kind in _units(model)
        if kind in spec.layer_types
        and any(fnmatch(name, p) for p in spec.include)
        and not any(fnmatch(name, p) for p in spec.exclude)
    ]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _quantized_weights(
    unit_name: str, unit: nn.Module, all_parameters: bool = False
) -> list[tuple[str, nn.Module, nn.Parameter]]:
    """(full name, owning module, parameter) of the unit's weight tensors, or of all its parameters."""
    owners = dict(unit.named_modules())
    weights = []
    for name, param in unit.named_parameters():
        owner_name, _, leaf = name.rpartition(".")
        if all_parameters or (leaf.endswith("weight") and param.dim() >= 2):
            weights.append((_join(unit_name, name), owners[owner_name], param))
    return weights


def theoretical_size_bits(model: nn.Module, quantized: Mapping[str, float]) -> int:
    """The paper's model size: each parameter element costs its bits if listed in `quantized`, else 32 (biases,
    norms and unselected layers); buffers such as BatchNorm running statistics are not parameters and not counted."""
    params = dict(model.named_parameters())
    unknown = sorted(set(quantized) - set(params))
    if unknown:
        raise ValueError(f"theoretical_size_bits: not parameters of the model: {unknown}")
    return round(sum(p.numel() * quantized.get(name, FLOAT_BITS) for name, p in params.items()))


def _nonnegative(stats: Tensor) -> bool:
    """Post-ReLU inputs (min >= 0) get ACIQ's half-range clipping."""
    return bool(stats[STATISTICS.index("min")] >= 0)


class _ActivationHook:
    """Forward pre-hook over a module's input slots: collects statistics (calibration) or fake-quantizes them.

    A tensor passed to several slots (self-attention's query is key is value) is handled once, which keeps the
    identity that `nn.MultiheadAttention`'s fast path checks.
    """

    def __init__(self, slots: tuple[str, ...], bits: int, distribution: str, collecting: bool) -> None:
        self.slots, self.bits, self.distribution, self.collecting = slots, bits, distribution, collecting
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.nonnegative: dict[str, bool] = {}
        self.ranges: dict[str, tuple[Tensor, Tensor]] | None = None

    def calibrated(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Clipping range per slot from the statistics averaged over calibration batches (official `-sm use`)."""
        return {
            slot: aciq_range(total / self.counts[slot], self.bits, self.distribution, self.nonnegative[slot])
            for slot, total in self.sums.items()
        }

    def _quantize(self, slot: str, x: Tensor) -> Tensor:
        if self.ranges is None:
            stats = activation_statistics(x)
            lo, hi = aciq_range(stats, self.bits, self.distribution, _nonnegative(stats))
        elif slot in self.ranges:
            lo, hi = self.ranges[slot]
        else:
            return x
        return quantize_dequantize(x.float(), lo, hi, self.bits).to(x.dtype)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        args, kwargs, done = list(args), dict(kwargs), {}
        for index, slot in enumerate(self.slots):
            if index < len(args):
                container, key = args, index
            elif slot in kwargs:
                container, key = kwargs, slot
            else:
                continue
            x = container[key]
            if not isinstance(x, Tensor) or not x.is_floating_point():
                continue
            if id(x) not in done:
                done[id(x)] = activation_statistics(x) if self.collecting else self._quantize(slot, x)
            if self.collecting:
                stats = done[id(x)]
                self.sums[slot] = self.sums[slot] + stats if slot in self.sums else stats
                self.counts[slot] = self.counts.get(slot, 0) + 1
                self.nonnegative[slot] = self.nonnegative.get(slot, True) and _nonnegative(stats)
            else:
                container[key] = done[id(x)]
        return tuple(args), kwargs


def quantize_model(
    model: nn.Module, spec: QuantizationSpec, calibrate: Callable[[], None] | None = None
) -> QuantizationReport:
    """Quantize the selected layers of `model` in place and return what was done.

    Weights become their quantize-dequantize values (per-channel min/max, bias/variance correction, bit
    allocation as `spec` says). With `spec.quantize_activations`, forward pre-hooks fake-quantize each selected
    layer's input with ACIQ clipping: from statistics gathered on the float model while `calibrate()` runs forward
    passes (official `-sm collect` then `-sm use`), or, without `calibrate`, from each batch itself (official
    on-the-fly mode). Call `report.remove_hooks()` before quantizing the same model again.
    """
    names = select_layers(model, spec)
    if not names:
        raise ValueError(
            f"quantize_model: no layer matches layer_types={spec.layer_types} include={spec.include} "
            f"exclude={spec.exclude}"
        )
    units = {name: module for name, module, _ in _units(model)}
    weights = [w for name in names for w in _quantized_weights(name, units[name], spec.all_parameters)]

    hooks: dict[str, _ActivationHook] = {}
    handles: list[RemovableHandle] = []
    if spec.quantize_activations:
        bits = spec.activation_bits or spec.bits
        targets = {}
        for name in names:
            if isinstance(units[name], nn.MultiheadAttention):
                targets[name] = (units[name], ("query", "key", "value"))
        for weight_name, owner, _ in weights:
            module_name = weight_name.rpartition(".")[0]
            if not any(module_name == t or module_name.startswith(t + ".") for t in targets):
                targets[module_name] = (owner, ("input",))
        for module_name, (module, slots) in targets.items():
            hooks[module_name] = _ActivationHook(slots, bits, spec.distribution, collecting=calibrate is not None)
            handles.append(module.register_forward_pre_hook(hooks[module_name], with_kwargs=True))
        if calibrate is not None:
            with torch.no_grad():
                calibrate()
            for hook in hooks.values():
                hook.ranges, hook.collecting = hook.calibrated(), False

    canonical = {id(p): name for name, p in model.named_parameters()}  # tied weights: once, under this name
    weight_bits, weight_mse = {}, {}
    with torch.no_grad():
        for _, owner, param in weights:
            name = canonical[id(param)]
            if name in weight_bits:
                continue
            channel_dim = 1 if isinstance(owner, nn.modules.conv._ConvTransposeNd) else 0
            w = param.detach().float().movedim(channel_dim, 0)
            kernel = w.dim() >= 2  # vectors (biases, norm scales) have no channels: one range per tensor
            w_q, channel_bits = quantize_weight(w, spec.bits, spec.per_channel_weights and kernel, spec.bit_allocation)
            if kernel:
                w_q = correct_weight(w, w_q, spec.bias_correction, spec.variance_correction)
            else:
                channel_bits = channel_bits[:1]
            param.copy_(w_q.movedim(0, channel_dim).to(param.dtype))
            weight_bits[name] = channel_bits.mean().item()
            weight_mse[name] = (w_q - w).pow(2).mean().item()

    params = dict(model.named_parameters())
    return QuantizationReport(
        spec=spec,
        layers=names,
        quantized_parameters=sum(params[name].numel() for name in weight_bits),
        total_parameters=sum(p.numel() for p in params.values()),
        size_bits=theoretical_size_bits(model, weight_bits),
        weight_bits=weight_bits,
        weight_mse=weight_mse,
        activation_ranges={
            f"{module_name}:{slot}": (lo.item(), hi.item())
            for module_name, hook in hooks.items()
            for slot, (lo, hi) in (hook.ranges or {}).items()
        },
        handles=handles,
    )
