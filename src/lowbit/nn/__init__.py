"""Modules: ``LowbitLinear`` and ``convert``/``unconvert``, ``LayerScale``."""

from lowbit.nn.convert import convert, default_filter, skip_reason, unconvert
from lowbit.nn.layer_scale import LayerScale
from lowbit.nn.linear import LowbitLinear, SwitchBackLinear

__all__ = ["LayerScale", "LowbitLinear", "SwitchBackLinear", "convert", "default_filter", "skip_reason", "unconvert"]
