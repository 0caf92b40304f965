"""Kernel pieces of the fused data flow (SPEC §9): each call here is one kernel the fused Triton path replaces.

Today every piece is the composition of lowbit's existing ops (``lowbit.kernels.ops``, the block quantizers) and
PyTorch; the fused GEMMs (epilogue: bias, activation, preact store, column sums, absmax, activation derivative)
and the LayerNorm + quantize kernel implement the same signatures with the same numerics:

* :func:`gemm` — ``out = epilogue(a @ bᵀ)``; with a plain epilogue (bias at most) 8-bit operands go through
  ``ops.scaled_mm`` (the faster of lowbit's Triton GEMM and cuBLAS for the shape, a custom op when compiled). 8-bit operands (``scale_a``/``scale_b`` given): the float32
  accumulator is dequantized, the bias added and the activation (or its derivative) applied **in float32**, then
  rounded **once** to ``out_dtype`` (the existing epilogue's convention). 16-bit operands (scales ``None``; the
  ``bf16`` recipe and the ``*-sim`` recipes, whose operands are dequantized first): the matmul runs in the operands'
  dtype as ``F.linear`` does and the epilogue ops run on its output, as the unfused modules do.
* :func:`quantize` — codes + scales of an operand, optionally from an absmax a producer's epilogue computed.
* :func:`layernorm_quantize` — LayerNorm with the quantization of its output in one pass.
* :func:`colsum` — the bias gradient of ``dY`` (fused into ``dY``'s quantize pass on the GPU).

Activations (``"gelu"``: erf form; ``"gelu_tanh"``; ``"quick_gelu"``: ``x·σ(1.702x)``) and their derivatives are
computed with the same PyTorch ops autograd uses for ``nn.GELU`` / ``x * torch.sigmoid(1.702 * x)``, so the fused
module's numbers equal the unfused composition's bit for bit in float32 on the CPU.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from lowbit.functional.recipe import Quant
from lowbit.kernels import _reference as reference
from lowbit.kernels import ops
from lowbit.kernels._common import ACTIVATIONS, Activation, checks_enabled, raise_if_nonfinite
from lowbit.kernels.blockwise import (
    ACT_BLOCK,
    WEIGHT_BLOCK,
    blockwise_mm,
    dequantize_blockwise,
    quantize_blockwise,
)
from lowbit.kernels.producers import act_backward, act_forward

AmaxKind = Literal["row", "tensor"]

__all__ = ["ACTIVATIONS", "Activation", "act_backward", "act_forward", "colsum", "dequantize_operand", "gemm",
           "layernorm_quantize", "quantize"]


def quantize(
    t: torch.Tensor,
    q: Quant,
    *,
    transpose: bool = False,
    weight: bool = False,
    amax: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (inner dimension last) and scales of an operand of a matmul, as ``q`` says.

    Vector-wise scaling is one scale per row of the laid-out operand (a column of ``t`` when ``transpose``).
    ``"block"`` scaling: 128×128 blocks for a ``weight`` (its transpose reuses the same codes and blocks), else 1×128
    blocks along the inner dimension. ``amax`` (row ``[M, 1]`` or tensor ``[]``, from a producer's epilogue) gives
    the scale without another reduction pass: the codes are the standalone quantizer's, bit for bit.
    """
    fmt = q.format
    if q.block:
        if weight:
            codes, scale = quantize_blockwise(t, fmt, WEIGHT_BLOCK)
            return (codes.t().contiguous(), scale.t().contiguous()) if transpose else (codes, scale)
        return quantize_blockwise(t.t() if transpose else t, fmt, ACT_BLOCK)
    vector = q.scaling != "tensor"
    if transpose:
        return ops.quantize(t, fmt, "column" if vector else "tensor", True)
    if amax is not None and t.device.type == "cpu" and t.numel() and not torch.compiler.is_compiling():
        # The fused GPU kernels take the epilogue's absmax; the CPU reference does it the same way, in float32.
        if checks_enabled(None):
            raise_if_nonfinite(t, f"quantize[{fmt}, {q.scaling}]")
        scale = reference.scale_from_absmax(amax, fmt)
        return reference.quantize_with_scale(t, scale, fmt), scale
    return ops.quantize(t, fmt, "row" if vector else "tensor", False)


def dequantize_operand(codes: torch.Tensor, scale: torch.Tensor, q: Quant, dtype: torch.dtype) -> torch.Tensor:
    """The 16/32-bit value of a quantized operand (simulated recipes, and SwitchBackM's saved X)."""
    if q.block:
        return dequantize_blockwise(codes, scale, q.format, dtype)
    return ops.dequantize(codes, scale, q.format, "row" if scale.ndim else "tensor", dtype)


def gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor | None,
    scale_b: torch.Tensor | None,
    *,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    act_grad_preact: torch.Tensor | None = None,
    out_dtype: torch.dtype,
    want_preact: bool = False,
    want_colsum: bool = False,
    want_amax: AmaxKind | None = None,
    block_scaled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``a [M, K] @ b [N, K]ᵀ`` with a fused epilogue; returns ``(out, preact, colsum, amax)``.

    * ``scale_a``/``scale_b``: the operands' scales (row ``[M,1]``/``[N,1]``, tensor ``[]``, or block scales with
      ``block_scaled``); ``None`` for 16-bit operands.
    * ``bias [N]`` is added before the activation.
    * ``activation`` alone: ``out = act(z)``, and ``preact = z`` rounded to ``out_dtype`` if ``want_preact``
      (what the activation's backward needs).
    * ``act_grad_preact`` (``[M, N]``, the forward's preact) with ``activation``: ``out = z · act'(preact)`` —
      the dgrad epilogue of the second linear of an MLP.
    * ``want_colsum``: float32 ``[N]`` sums over rows of ``out`` as stored (a bias gradient).
    * ``want_amax``: float32 absmax of ``out`` as stored, per row ``[M, 1]`` or per tensor ``[]`` (the next
      quantizer's scale).
    """
    preact = None
    plain = activation is None and act_grad_preact is None and not (want_preact or want_colsum or want_amax)
    if scale_a is not None and plain and not block_scaled:
        # A plain epilogue (dequantize + bias): the fastest plain 8-bit GEMM for the shape (lowbit's Triton GEMM or
        # cuBLAS, lowbit.kernels.matmul), a custom op under torch.compile.
        return ops.scaled_mm(a, b, scale_a, scale_b, bias, out_dtype), None, None, None
    if scale_a is not None and a.is_cuda:
        # lowbit's Hopper GEMM runs the whole epilogue in one pass (the pre-activation is rounded to out_dtype
        # before the activation, as the unfused layers round it; agreement with the CPU pieces is at that dtype).
        from lowbit.kernels.gemm import gemm as fused_gemm

        r = fused_gemm(a, b, scale_a, scale_b, bias=bias, activation=activation,  # type: ignore[arg-type]
                       store_preact=want_preact and act_grad_preact is None, act_grad_at=act_grad_preact,
                       amax=want_amax, colsum=want_colsum, blockwise=block_scaled, out_dtype=out_dtype)
        return r.out, r.preact, r.colsum, r.amax
    if scale_a is None:
        z = F.linear(a, b, bias)
        if act_grad_preact is not None:
            out = act_backward(z, act_grad_preact, activation)  # type: ignore[arg-type]
        elif activation is not None:
            out, preact = act_forward(z, activation), (z if want_preact else None)
        else:
            out = z
        out = out.to(out_dtype)
    else:
        if block_scaled:
            z = blockwise_mm(a, scale_a, b, scale_b, bias, torch.float32)
        else:
            z = ops.scaled_mm(a, b, scale_a, scale_b, bias, torch.float32)
        if act_grad_preact is not None:
            out = act_backward(z, act_grad_preact.float(), activation).to(out_dtype)  # type: ignore[arg-type]
        elif activation is not None:
            out = act_forward(z, activation).to(out_dtype)
            preact = z.to(out_dtype) if want_preact else None
        else:
            out = z.to(out_dtype)
    col = out.sum(0, dtype=torch.float32) if want_colsum else None
    amax = reference.absmax(out, want_amax) if want_amax is not None else None
    return out, preact, col, amax


def colsum(t: torch.Tensor) -> torch.Tensor:
    """float32 sums over the rows of a 2-D tensor (a bias gradient)."""
    return t.sum(0, dtype=torch.float32)


def layernorm_quantize(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    fmt: str | None,
    granularity: Literal["row", "tensor", "block"] = "row",
    *,
    out_dtype: torch.dtype | None = None,
    want_y16: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """LayerNorm of 2-D ``x`` over its last dim, with the codes of its output: ``(codes, scale, y16, mean, rstd)``.

    ``y`` is computed as ``torch.native_layer_norm`` does (float32 statistics) and rounded to ``out_dtype``
    (default ``x.dtype``); the codes are those of the standalone quantizer on that rounded ``y`` (row: 1 scale per
    token; ``"block"``: 1×128 blocks). ``fmt=None`` skips the quantization; ``y16`` is returned only with
    ``want_y16`` (the recipe's wgrad or a tensor-wise quantizer needs it). ``mean``/``rstd`` (``[M, 1]``) are what
    the backward uses.
    """
    if fmt is not None and granularity == "row":
        # One pass (lowbit.kernels.producers): h, its row codes and scales, the statistics.
        codes, scale, h, mean, rstd = ops.layernorm_quantize(x, weight, bias, eps, fmt, out_dtype or x.dtype, want_y16)
        return codes, scale, (h if want_y16 else None), mean, rstd
    y, mean, rstd = torch.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)
    y = y.to(out_dtype or x.dtype)
    codes = scale = None
    if fmt is not None:
        codes, scale = quantize(y, Quant(fmt, granularity))  # type: ignore[arg-type]
    return codes, scale, (y if want_y16 else None), mean, rstd
