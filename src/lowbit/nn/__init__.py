"""Modules: ``LowbitLinear``, ``LowbitMultiheadAttention``, the fused ``LowbitMLP`` / ``LayerNormLinear`` / ``LayerNormMLP``,
``PackedLinear`` (q/k/v of one input as one GEMM),
``convert()``/``unconvert()`` with their ``ConvertReport``, ``measured_filter`` (layers chosen by measured speed),
``compile_blocks`` (each transformer block compiled with CUDA graphs), ``LayerScale``."""

from lowbit.nn.attention import LowbitMultiheadAttention
from lowbit.nn.autolayers import GAIN_MARGIN, MeasuredFilter, linear_tokens, measured_filter
from lowbit.nn.compile import compile_blocks, repeated_blocks
from lowbit.nn.convert import (
    ConvertReport,
    LayerRow,
    convert,
    convert_report,
    default_filter,
    match_activation,
    match_mlp,
    matmul_layers,
    skip_reason,
    unconvert,
)
from lowbit.nn.layer_scale import LayerScale
from lowbit.nn.layernorm import LayerNormAlias, LayerNormLinear, fuse_layernorm
from lowbit.nn.linear import LowbitLinear, SwitchBackLinear
from lowbit.nn.mlp import LayerNormMLP, LowbitMLP
from lowbit.nn.packed import PackedLinear, ProjectionGroup, pack_projections

__all__ = [
    "GAIN_MARGIN",
    "ConvertReport",
    "LayerNormAlias",
    "LayerNormLinear",
    "LayerNormMLP",
    "LayerRow",
    "LayerScale",
    "LowbitLinear",
    "LowbitMLP",
    "LowbitMultiheadAttention",
    "MeasuredFilter",
    "PackedLinear",
    "ProjectionGroup",
    "SwitchBackLinear",
    "compile_blocks",
    "convert",
    "convert_report",
    "default_filter",
    "fuse_layernorm",
    "linear_tokens",
    "match_activation",
    "match_mlp",
    "matmul_layers",
    "measured_filter",
    "pack_projections",
    "repeated_blocks",
    "skip_reason",
    "unconvert",
]
