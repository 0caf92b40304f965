"""Modules: ``LowbitLinear``, the fused ``LowbitMLP`` / ``LayerNormLinear`` / ``LayerNormMLP``,
``convert()``/``unconvert()`` with their ``ConvertReport``, ``LayerScale``."""

from lowbit.nn.convert import (
    ConvertReport,
    convert,
    convert_report,
    default_filter,
    match_activation,
    match_mlp,
    skip_reason,
    unconvert,
)
from lowbit.nn.layer_scale import LayerScale
from lowbit.nn.layernorm import LayerNormAlias, LayerNormLinear, fuse_layernorm
from lowbit.nn.linear import LowbitLinear, SwitchBackLinear
from lowbit.nn.mlp import LayerNormMLP, LowbitMLP

__all__ = [
    "ConvertReport",
    "LayerNormAlias",
    "LayerNormLinear",
    "LayerNormMLP",
    "LayerScale",
    "LowbitLinear",
    "LowbitMLP",
    "SwitchBackLinear",
    "convert",
    "convert_report",
    "default_filter",
    "fuse_layernorm",
    "match_activation",
    "match_mlp",
    "skip_reason",
    "unconvert",
]
