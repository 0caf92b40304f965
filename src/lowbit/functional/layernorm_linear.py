"""``layernorm_linear`` and ``layernorm_mlp``: LayerNorm fused with the quantization of its output (issue #17).

The LayerNorm writes the codes + scales its consumer's forward matmul reads in the same pass (and its 16-bit
output only where the recipe's wgrad, or a tensor-wise quantizer, needs it); the backward uses the saved mean and
rstd. Under ``torch.autocast`` the LayerNorm runs in float32 and its output is cast to the autocast dtype, as
``nn.LayerNorm`` followed by a linear does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.functional._fused import _FusedFunction, _Spec, row_flow
from lowbit.functional._pieces import act_forward
from lowbit.functional.linear import _check, linear, weight_is_autocast_copy
from lowbit.functional.mlp import _autocast, _check_activation, _check_second, composed_mlp
from lowbit.functional.recipe import Recipe, get_recipe

__all__ = ["layernorm_linear", "layernorm_mlp"]


def _check_norm(x: torch.Tensor, ln_weight: torch.Tensor | None, ln_bias: torch.Tensor | None, eps: float) -> None:
    d = x.shape[-1] if x.ndim else None
    for name, t in (("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if t is not None and tuple(t.shape) != (d,):
            raise ValueError(f"lowbit layernorm: {name} must have shape [{d}] (the input's last dim), "
                             f"got {tuple(t.shape)}")
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"lowbit layernorm: {name} is {t.dtype} but the input is {x.dtype}; cast the module or "
                            "run under torch.autocast")
    if not eps > 0:
        raise ValueError(f"lowbit layernorm: eps must be > 0, got {eps!r}")


def _prepare(x, ln_weight, ln_bias, eps, linears):
    """Autocast: LayerNorm in float32 (autocast's policy for layer_norm), the linears in the autocast dtype."""
    if torch.is_autocast_enabled(x.device.type):
        x = x.float()
        ln_weight = ln_weight.float() if ln_weight is not None else None
        ln_bias = ln_bias.float() if ln_bias is not None else None
        linears = _autocast(x, *linears)
    _check_norm(x, ln_weight, ln_bias, eps)
    return x, ln_weight, ln_bias, linears


def _check_first(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, recipe: Recipe) -> None:
    """fc1's checks against its input, the LayerNorm's output (in the linear's dtype)."""
    if x.ndim == 0:
        raise ValueError("lowbit layernorm: the input must have at least 1 dim, got a 0-dim tensor")
    if not x.is_floating_point():
        raise TypeError(f"lowbit layernorm: the input must be a floating tensor, got {x.dtype}")
    if not torch.is_autocast_enabled(x.device.type) and w1.dtype != x.dtype:
        raise TypeError(f"lowbit layernorm: input and weight dtypes differ ({x.dtype}, {w1.dtype}); cast the module "
                        "or run under torch.autocast")
    _check(x.new_empty((0, x.shape[-1]), dtype=w1.dtype) if w1.is_floating_point() else x, w1, b1, recipe)
    if x.device != w1.device:
        raise ValueError(f"lowbit layernorm: input and weight must be on one device, got {x.device} and {w1.device}")


def layernorm_linear(
    x: torch.Tensor,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    recipe: str | Recipe = "switchback",
    eps: float = 1e-5,
) -> torch.Tensor:
    """``linear(layer_norm(x))`` with the linear's three matmuls as ``recipe`` says; one autograd function (under
    ``torch.compile`` outside the row-wise flow: ``F.layer_norm`` then :func:`lowbit.functional.linear`, see
    ``composed_mlp``)."""
    recipe = get_recipe(recipe)
    if torch.compiler.is_compiling() and not row_flow(recipe):
        return linear(F.layer_norm(x, x.shape[-1:], ln_weight, ln_bias, eps), weight, bias, recipe)
    copies = weight_is_autocast_copy(x, weight)
    x, ln_weight, ln_bias, (weight, bias) = _prepare(x, ln_weight, ln_bias, eps, (weight, bias))
    if not recipe.quantized and x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return F.linear(F.layer_norm(x, x.shape[-1:], ln_weight, ln_bias, eps), weight, bias)
    _check_first(x, weight, bias, recipe)
    with torch.autocast(x.device.type, enabled=False):
        return _FusedFunction.apply(x, ln_weight, ln_bias, weight, bias, None, None,
                                    _Spec(recipe, None, float(eps), False, copies))


def layernorm_mlp(
    x: torch.Tensor,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    activation: str = "gelu",
    recipe: str | Recipe = "switchback",
    eps: float = 1e-5,
    *,
    recompute_activation: bool = False,
) -> torch.Tensor:
    """``fc2(act(fc1(layer_norm(x))))`` as one autograd function (see :func:`lowbit.functional.mlp`; under
    ``torch.compile`` outside the row-wise flow: ``F.layer_norm`` then ``composed_mlp``)."""
    recipe = get_recipe(recipe)
    _check_activation(activation)
    if torch.compiler.is_compiling() and not row_flow(recipe):
        return composed_mlp(F.layer_norm(x, x.shape[-1:], ln_weight, ln_bias, eps), w1, b1, w2, b2, activation, recipe)
    copies = weight_is_autocast_copy(x, w1)
    x, ln_weight, ln_bias, (w1, b1, w2, b2) = _prepare(x, ln_weight, ln_bias, eps, (w1, b1, w2, b2))
    if not recipe.quantized and x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        h = F.layer_norm(x, x.shape[-1:], ln_weight, ln_bias, eps)
        return F.linear(act_forward(F.linear(h, w1, b1), activation), w2, b2)
    _check_first(x, w1, b1, recipe)
    _check_second(w1, w2, b2, recipe)
    with torch.autocast(x.device.type, enabled=False):
        return _FusedFunction.apply(x, ln_weight, ln_bias, w1, b1, w2, b2,
                                    _Spec(recipe, activation, float(eps), recompute_activation, copies))
