"""lowbit: fast, stable, low-precision training of transformers, starting with CLIP."""

from lowbit._version import __version__
from lowbit.functional import RECIPES, Recipe, get_recipe
from lowbit.nn import LayerScale, LowbitLinear, SwitchBackLinear, convert, unconvert

__all__ = [
    "RECIPES",
    "LayerScale",
    "LowbitLinear",
    "Recipe",
    "SwitchBackLinear",
    "__version__",
    "convert",
    "get_recipe",
    "unconvert",
]
