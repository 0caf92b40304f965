"""``lowbit.functional.linear``: one autograd function for every recipe.

The recipe says, for each of the three matmuls, whether it runs in 16-bit or on quantized operands, and
how; this module only wires the operands: which tensor is quantized along which axis, what is saved. On CUDA
the quantized matmuls run the Triton kernels (int8 or fp8 codes, dequantize + bias fused in the epilogue);
elsewhere the PyTorch reference computes the same numerics. ``*-sim`` recipes quantize → dequantize and run
an ordinary matmul in the input's dtype. In the backward, a recipe that quantizes dY row-wise for the dgrad takes
dY's codes and the bias gradient (its column sums) from one pass (``quantize_rows_colsum``, as the fused MLP does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.functional import _pieces
from lowbit.functional.qweight import QuantizedWeight
from lowbit.functional.recipe import Quant, Recipe, get_recipe
from lowbit.kernels import ops
from lowbit.kernels._common import device_capability
from lowbit.kernels.blockwise import blockwise_mm


def _quantize_operand(t: torch.Tensor, q: Quant, transpose: bool, weight: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes laid out with the inner dimension last (transposing if asked) and their scale.

    Vector-wise scaling is always one scale per row of the laid-out operand: a row of ``t`` when it is used
    as is, a column of ``t`` when it is transposed. Block scaling: 128×128 blocks for a ``weight``, else 1×128.
    A :class:`QuantizedWeight` (FSDP2's 8-bit all-gather) already holds the tensor-wise codes: they are used as
    they are.
    """
    if isinstance(t, QuantizedWeight):
        return t.codes_for(q, transpose)
    if q.block:
        return _pieces.quantize(t, q, transpose=transpose, weight=weight)
    vector = q.scaling != "tensor"
    if transpose:
        return ops.quantize(t, q.format, "column" if vector else "tensor", True)
    return ops.quantize(t, q.format, "row" if vector else "tensor", False)


def _qmm(a, b, qa: Quant, qb: Quant, bias, out_dtype: torch.dtype, simulated: bool) -> torch.Tensor:
    """``dequant(a) @ dequant(b)ᵀ (+ bias)`` from ``(codes, scale)`` pairs laid out inner-dimension-last."""
    (ca, sa), (cb, sb) = a, b
    if qa.block:
        if simulated:
            return F.linear(_pieces.dequantize_operand(ca, sa, qa, out_dtype),
                            _pieces.dequantize_operand(cb, sb, qb, out_dtype), bias)
        return blockwise_mm(ca, sa, cb, sb, bias, out_dtype)
    if simulated:
        da = ops.dequantize(ca, sa, qa.format, "row" if sa.ndim else "tensor", out_dtype)
        db = ops.dequantize(cb, sb, qb.format, "row" if sb.ndim else "tensor", out_dtype)
        return F.linear(da, db, bias)
    return ops.scaled_mm(ca, cb, sa, sb, bias, out_dtype)


def _shares_codes(a: Quant | None, b: Quant | None) -> bool:
    """Both layouts of one tensor can come from a single :func:`ops.quantize_dual` pass."""
    return a is not None and a == b and a.scaling == "tensor"


def weight_is_autocast_copy(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Autocast will cast ``weight`` to a new per-step tensor (an fp32 parameter under bf16 autocast): see
    :func:`dual_weight`."""
    device_type = x.device.type
    return torch.is_autocast_enabled(device_type) and weight.dtype != torch.get_autocast_dtype(device_type)


def dual_weight(recipe: Recipe, weight: torch.Tensor) -> bool:
    """The forward can quantize W and Wᵀ (the dgrad's operand) from one absmax (``ops.quantize_dual``): both are
    tensor-wise in one format.

    Callers do it only for a weight that is a per-step copy (autocast's cast of an fp32 parameter): the saved Wᵀ
    codes (1 byte per element) then replace the saved 16-bit copy (2 bytes), and one absmax pass of W goes (under
    ``torch.compile`` the partitioner already moved Wᵀ's quantization into the forward; eager, the backward no
    longer runs it). A parameter itself (a bf16 model, FSDP's unsharded weight, which FSDP frees after the forward
    and gathers again for the backward) is saved as it is and quantized again in the backward, so that no codes
    outlive FSDP's resharding.
    """
    return (not recipe.simulated and recipe.dgrad.quantized and _shares_codes(recipe.forward.right, recipe.dgrad.right)
            and not isinstance(weight, QuantizedWeight))


class _LowbitLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, recipe: Recipe,
                weight_is_copy: bool = False):
        x2d = x.reshape(-1, x.shape[-1])
        fwd, sim = recipe.forward, recipe.simulated
        qx = saved = None
        w_saved: tuple[torch.Tensor, torch.Tensor | None] = (weight, None)
        if fwd.quantized:
            if recipe.save == "wgrad-quantized" and ctx.needs_input_grad[1] and _shares_codes(fwd.left,
                                                                                            recipe.wgrad.right):
                cx, cxt, sx = ops.quantize_dual(x2d, fwd.left.format)
                qx, saved = (cx, sx), (cxt, sx)
            else:
                qx = _quantize_operand(x2d, fwd.left, False)
            if weight_is_copy and ctx.needs_input_grad[0] and dual_weight(recipe, weight):
                cw, cwt, sw = ops.quantize_dual(weight, fwd.right.format)
                qw, w_saved = (cw, sw), (cwt, sw)
            else:
                qw = _quantize_operand(weight, fwd.right, False, weight=True)
            y = _qmm(qx, qw, fwd.left, fwd.right, bias, x.dtype, sim)
        else:
            y = F.linear(x2d, weight, bias)
        if saved is None:  # (quantize_dual above already gave the wgrad layout)
            if recipe.save == "forward-quantized":
                saved = qx
            elif recipe.save == "wgrad-quantized":
                saved = _quantize_operand(x2d, recipe.wgrad.right, True) if ctx.needs_input_grad[1] else (None, None)
            else:
                saved = (x2d, None)
        # W: its dgrad codes (Wᵀ, the forward's scale) when the forward made them in the same pass, else W itself
        # (quantized again in the backward).
        ctx.save_for_backward(*saved, *w_saved)
        ctx.w_dtype = weight.dtype
        ctx.recipe = recipe
        ctx.x_shape = x.shape
        ctx.has_bias = bias is not None
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        saved_a, saved_b, weight, w_scale = ctx.saved_tensors
        recipe: Recipe = ctx.recipe
        sim = recipe.simulated
        dy2d = dy.reshape(-1, dy.shape[-1])
        dx = dw = db = None
        dg, wg = recipe.dgrad, recipe.wgrad
        qdy = qdyt = None  # dY's codes for dgrad (rows = tokens) and wgrad (transposed), when both are wanted
        want_db = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[0] and ctx.needs_input_grad[1] and _shares_codes(dg.left, wg.left):
            cdy, cdyt, sdy = ops.quantize_dual(dy2d, dg.left.format)
            qdy, qdyt = (cdy, sdy), (cdyt, sdy)
        elif ctx.needs_input_grad[0] and want_db and dg.quantized and dg.left.scaling == "row":
            # dY's row-wise codes and the bias gradient (its column sums) from one read of dY (SPEC §10)
            cdy, sdy, colsum = ops.quantize_rows_colsum(dy2d, dg.left.format)
            qdy, db = (cdy, sdy), colsum.to(dy.dtype)
        if ctx.needs_input_grad[0]:
            if dg.quantized:
                qdy = qdy or _quantize_operand(dy2d, dg.left, False)
                qwt = (weight, w_scale) if w_scale is not None else _quantize_operand(weight, dg.right, True,
                                                                                      weight=True)
                dx2d = _qmm(qdy, qwt, dg.left, dg.right, None, dy.dtype, sim)
            else:
                dx2d = dy2d @ weight
            dx = dx2d.reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            if wg.quantized:
                qdyt = qdyt or _quantize_operand(dy2d, wg.left, True)
                dw = _qmm(qdyt, (saved_a, saved_b), wg.left, wg.right, None, ctx.w_dtype, sim)
            else:
                if recipe.save == "forward-quantized":
                    x2d = ops.dequantize(saved_a, saved_b, recipe.forward.left.format,
                                         "row" if saved_b.ndim else "tensor", dy.dtype)
                else:
                    x2d = saved_a
                dw = dy2d.t() @ x2d
        if want_db and db is None:
            db = dy2d.sum(0, dtype=torch.float32).to(dy.dtype)
        return dx, dw, db, None, None


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, recipe: Recipe) -> None:
    if not x.is_floating_point() or not weight.is_floating_point():
        raise TypeError(f"lowbit linear: input and weight must be floating tensors, got {x.dtype} and {weight.dtype}")
    if weight.ndim != 2:
        raise ValueError(f"lowbit linear: weight must be 2-D [out_features, in_features], got {tuple(weight.shape)}")
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"lowbit linear: input's last dim must be in_features={weight.shape[1]}, "
                         f"got input of shape {tuple(x.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"lowbit linear: bias must have shape [{weight.shape[0]}], got {tuple(bias.shape)}")
    devices = {x.device, weight.device} | ({bias.device} if bias is not None else set())
    if len(devices) > 1:
        raise ValueError(f"lowbit linear: input, weight and bias must be on one device, got {sorted(map(str, devices))}")
    dtypes = {x.dtype, weight.dtype} | ({bias.dtype} if bias is not None else set())
    if len(dtypes) > 1:
        raise TypeError(f"lowbit linear: input, weight and bias dtypes differ ({sorted(map(str, dtypes))}); "
                        "cast the module or run under torch.autocast")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"lowbit linear: recipe {recipe.name!r} takes float32, float16 or bfloat16, got {x.dtype}")
    if recipe.uses_fp8 and not recipe.simulated and x.is_cuda and not torch.compiler.is_compiling():
        cap = device_capability(x.device)
        if cap < (8, 9):
            name = torch.cuda.get_device_name(x.device)
            raise RuntimeError(
                f"recipe {recipe.name!r} runs fp8 matmuls natively, which needs compute capability ≥ 8.9 "
                f"(Ada, Hopper); {name} has {cap[0]}.{cap[1]}. Use {recipe.name + '-sim'!r} to simulate the "
                "fp8 numerics on this GPU."
            )


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, recipe: str | Recipe = "switchback"
) -> torch.Tensor:
    """``x @ weightᵀ + bias`` with the three matmuls of forward and backward as ``recipe`` says.

    ``x`` is ``[..., in_features]`` (leading dims are flattened into tokens). Under ``torch.autocast`` the
    operands are cast to the autocast dtype first, as ``F.linear`` does. The ``bf16`` recipe is ``F.linear``.
    """
    recipe = get_recipe(recipe)
    if not recipe.quantized:
        return F.linear(x, weight, bias)
    device_type = x.device.type
    weight_is_copy = weight_is_autocast_copy(x, weight)
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    _check(x, weight, bias, recipe)
    with torch.autocast(device_type, enabled=False):
        return _LowbitLinearFunction.apply(x, weight, bias, recipe, weight_is_copy)
