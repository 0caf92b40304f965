"""lowbit: fast, stable, low-precision training of transformers, starting with CLIP."""

from lowbit._version import __version__
from lowbit.functional import RECIPES, Recipe, get_recipe
from lowbit.monitor import RMSMonitor
from lowbit.nn import (
    LayerScale,
    LowbitLinear,
    LowbitMultiheadAttention,
    SwitchBackLinear,
    compile_blocks,
    convert,
    convert_report,
    unconvert,
)
from lowbit.optim import StableAdamW

__all__ = [
    "RECIPES",
    "LayerScale",
    "LowbitLinear",
    "LowbitMultiheadAttention",
    "RMSMonitor",
    "Recipe",
    "StableAdamW",
    "SwitchBackLinear",
    "__version__",
    "compile_blocks",
    "convert",
    "convert_report",
    "get_recipe",
    "unconvert",
]
