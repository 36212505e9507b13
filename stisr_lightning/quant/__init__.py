"""ACIQ post-training quantization (Banner et al., NeurIPS 2019) with per-layer-type selection; see `apply`."""

from stisr_lightning.quant.apply import (
    LAYER_TYPES,
    QuantizationReport,
    QuantizationSpec,
    quantize_model,
    select_layers,
    theoretical_size_bits,
)

__all__ = [
    "LAYER_TYPES",
    "QuantizationReport",
    "QuantizationSpec",
    "quantize_model",
    "select_layers",
    "theoretical_size_bits",
]
