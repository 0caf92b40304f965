"""Autograd functions driven by a :class:`Recipe`, and the named recipes."""

from lowbit.functional._fused import row_flow
from lowbit.functional.layernorm_linear import layernorm_linear, layernorm_mlp
from lowbit.functional.linear import linear
from lowbit.functional.mlp import mlp
from lowbit.functional.qweight import QuantizedWeight
from lowbit.functional.recipe import RECIPES, Matmul, Quant, Recipe, get_recipe

__all__ = ["RECIPES", "Matmul", "Quant", "QuantizedWeight", "Recipe", "get_recipe", "layernorm_linear",
           "layernorm_mlp", "linear", "mlp", "row_flow"]
