"""Autograd functions driven by a :class:`Recipe`, and the named recipes."""

from lowbit.functional.linear import linear
from lowbit.functional.qweight import QuantizedWeight
from lowbit.functional.recipe import RECIPES, Matmul, Quant, Recipe, get_recipe

__all__ = ["RECIPES", "Matmul", "Quant", "QuantizedWeight", "Recipe", "get_recipe", "linear"]
