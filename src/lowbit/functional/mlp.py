"""``lowbit.functional.mlp``: fc1 → activation → fc2 as one autograd function for every recipe (issue #17).

See :mod:`lowbit.functional._fused` for the data flow and :mod:`lowbit.functional._pieces` for the kernel pieces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.functional._fused import _FusedFunction, _Spec, row_flow
from lowbit.functional._pieces import ACTIVATIONS, act_forward
from lowbit.functional.linear import _check, linear, weight_is_autocast_copy
from lowbit.functional.recipe import Recipe, get_recipe

__all__ = ["mlp"]


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"lowbit mlp: activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")


def _check_second(w1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor | None, recipe: Recipe) -> None:
    """fc2 must take fc1's output; then the usual linear checks on a stand-in hidden activation."""
    if w2.ndim != 2 or w2.shape[1] != w1.shape[0]:
        raise ValueError(f"lowbit mlp: fc2's weight must be [out_features, {w1.shape[0]}] (fc1's out_features), "
                         f"got {tuple(w2.shape)}")
    _check(w1.new_empty((0, w1.shape[0])), w2, b2, recipe)


def _autocast(x, *tensors):
    """Cast the linears' operands as ``F.linear`` does under ``torch.autocast`` (None stays None)."""
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t is not None else None for t in tensors)


def _unfused(x, w1, b1, w2, b2, activation):
    return F.linear(act_forward(F.linear(x, w1, b1), activation), w2, b2)


def composed_mlp(x, w1, b1, w2, b2, activation: str, recipe: Recipe) -> torch.Tensor:
    """The per-linear composition ``linear(act(linear(x)))`` of the same recipe: what the fused function computes
    (its definition), and what runs under ``torch.compile`` for recipes outside SPEC §10's row-wise flow
    (:func:`lowbit.functional._fused.row_flow`). Their fused function launches Triton GEMMs with epilogue hooks from
    Python, which dynamo cannot trace; the per-linear path's quantizers and matmuls are ``torch.ops.lowbit`` custom
    ops. The row-wise flow is built from custom ops only, so compiled models run its fused function."""
    return linear(act_forward(linear(x, w1, b1, recipe), activation), w2, b2, recipe)


def mlp(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    activation: str = "gelu",
    recipe: str | Recipe = "switchback",
    *,
    recompute_activation: bool = False,
) -> torch.Tensor:
    """``fc2(act(fc1(x)))`` with fc1's and fc2's three matmuls each as ``recipe`` says, in one autograd function.

    ``activation``: ``"gelu"`` (erf), ``"gelu_tanh"`` or ``"quick_gelu"`` (``x·σ(1.702x)``). Same numerics as
    ``LowbitLinear → activation → LowbitLinear`` with that recipe; ``recompute_activation`` recomputes the hidden
    activation from its saved pre-activation in the backward instead of keeping it (recipes whose fc2 wgrad reads
    it in 16-bit). Bad input raises as :func:`lowbit.functional.linear` does.
    """
    recipe = get_recipe(recipe)
    _check_activation(activation)
    if torch.compiler.is_compiling() and not row_flow(recipe):
        return composed_mlp(x, w1, b1, w2, b2, activation, recipe)
    copies = weight_is_autocast_copy(x, w1)
    w1, b1, w2, b2 = _autocast(x, w1, b1, w2, b2)
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(w1.dtype)
    if not recipe.quantized and x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return _unfused(x, w1, b1, w2, b2, activation)  # bf16 recipe on e.g. float64: plain PyTorch
    _check(x, w1, b1, recipe)
    _check_second(w1, w2, b2, recipe)
    with torch.autocast(x.device.type, enabled=False):
        return _FusedFunction.apply(x, None, None, w1, b1, w2, b2,
                                    _Spec(recipe, activation, None, recompute_activation, copies))
