"""Pure-PyTorch reference numerics of the quantizers and scaled matmuls (any device).

These define what the Triton kernels compute, operation for operation in float32, so that the two paths give
identical int8 codes and scales. The tests check both against float64 math.

Conventions (SPEC §2):
* int8: ``scale = absmax`` of the group; ``q = round_half_even(x · (127 / absmax))`` clipped to ±127;
  dequantize ``x̂ = q · absmax / 127``. An all-zero group has ``absmax = 0`` and codes 0.
* fp8: ``scale = fmax / max(absmax, fmax / 2**127)``; ``q = fp8(clip(x · scale, ±fmax))`` (round to nearest
  even); dequantize ``x̂ = q / scale``. The floor keeps the scale finite for all-zero groups.
* A group holding NaN gets a NaN scale, one holding ±Inf (and no NaN) an int8 scale of Inf / fp8 scale of 0:
  either way everything dequantized from it is non-finite. Codes of non-finite int8 inputs are 0.
"""

from __future__ import annotations

import torch

from lowbit.kernels._common import FP8_AMAX_FLOOR, FP8_DTYPES, FP8_MAX, INT8_MAX, Format, Granularity


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b`` in float32, correctly rounded in eager mode and when compiled.

    Inductor's Triton lowers a float32 ``/`` to the approximate ``div.full.f32`` (up to 2 ulp off), which gave
    fp8 scales a few ulp away from the eager ones on an H100. Compiled, the quotient is taken in float64 and
    rounded once to float32: float64 has more than 2·24 + 2 bits, so that double rounding equals the correctly
    rounded float32 quotient, bit for bit (and eager mode keeps the plain float32 division).
    """
    if torch.compiler.is_compiling():
        return (a.double() / b.double()).float()
    return a / b


def _const_div(c: float, t: torch.Tensor) -> torch.Tensor:
    """``c / t`` correctly rounded (PyTorch's scalar / tensor multiplies by a reciprocal on the CPU)."""
    return _div(torch.full_like(t, c), t)


def absmax(x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """float32 absmax per group, kept in broadcastable shape: row ``[..., 1]``, column ``[1, ..., K]``, tensor ``[]``.

    NaN propagates (``torch.amax`` semantics); empty groups give 0.
    """
    a = x.float().abs()
    if granularity == "tensor":
        return a.amax() if a.numel() else a.new_zeros(())
    if granularity == "row":
        shape = (*x.shape[:-1], 1)
        return a.amax(dim=-1, keepdim=True) if x.shape[-1] else a.new_zeros(shape)
    dims = tuple(range(x.ndim - 1))
    shape = (1,) * (x.ndim - 1) + (x.shape[-1],)
    return a.amax(dim=dims, keepdim=True) if a.numel() else a.new_zeros(shape)


def scale_from_absmax(amax: torch.Tensor, fmt: Format) -> torch.Tensor:
    """The stored scale of a group: absmax for int8, ``fmax / max(absmax, floor)`` for fp8 (float32)."""
    if fmt == "int8":
        return amax.float()
    return _const_div(FP8_MAX[fmt], torch.clamp_min(amax.float(), FP8_AMAX_FLOOR[fmt]))


def quantize_multiplier(scale: torch.Tensor, fmt: Format) -> torch.Tensor:
    """What x is multiplied by before rounding: ``127 / absmax`` (0 for an all-zero group) or the fp8 scale."""
    if fmt == "int8":
        return torch.where(scale > 0, _const_div(INT8_MAX, scale), torch.zeros_like(scale))
    return scale


def quantize_with_scale(x: torch.Tensor, scale: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Codes of ``x`` given its (broadcastable) scale, in float32 arithmetic."""
    y = x.float() * quantize_multiplier(scale, fmt)
    if fmt == "int8":
        y = torch.nan_to_num(y, nan=0.0).clamp(-INT8_MAX, INT8_MAX)
        return torch.round(y).to(torch.int8)  # torch.round rounds half to even
    fmax = FP8_MAX[fmt]
    return y.clamp(-fmax, fmax).to(FP8_DTYPES[fmt])  # clamp keeps NaN; the cast rounds to nearest even


def quantize(x: torch.Tensor, fmt: Format, granularity: Granularity) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` (any shape, rows along the last dim) to ``fmt``; returns ``(codes, scale)``."""
    scale = scale_from_absmax(absmax(x, granularity), fmt)
    return quantize_with_scale(x, scale, fmt), scale


def quantize_transpose(
    x: torch.Tensor, fmt: Format, granularity: Granularity
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D ``x`` column- or tensor-wise and return ``(codes of xᵀ, contiguous; scale for xᵀ)``.

    The scale is shaped for the transpose: column-wise gives ``[K, 1]`` (a row-wise scale of ``xᵀ``).
    """
    q, scale = quantize(x, fmt, granularity)
    if granularity == "column":
        scale = scale.reshape(-1, 1)
    return q.t().contiguous(), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, fmt: Format, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`quantize`: ``q · absmax / 127`` (int8) or ``q / scale`` (fp8), cast to ``dtype``."""
    if fmt == "int8":
        return _div(q.float() * scale, torch.full_like(scale, INT8_MAX)).to(dtype)
    return _div(q.float(), scale).to(dtype)


def dequant_factor(scale: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Per-group factor that turns a code back into a value: ``absmax / 127`` or ``1 / scale``."""
    return _div(scale, torch.full_like(scale, INT8_MAX)) if fmt == "int8" else _const_div(1.0, scale)


def scaled_mm(
    qa: torch.Tensor,
    qb: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    fmt_a: Format,
    fmt_b: Format,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    acc_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(qa @ qbᵀ) · fa · fbᵀ + bias`` with ``qa [M, K]``, ``qb [N, K]`` and scales ``[M, 1]``/``[N, 1]`` or ``[]``.

    The codes are multiplied in ``acc_dtype``: float64 is exact for any K (tests), float32 is exact while
    partial sums stay under 2**24 and otherwise rounds like any float32 matmul (the CPU training path).
    """
    acc = qa.to(acc_dtype) @ qb.to(acc_dtype).t()
    fa = dequant_factor(scale_a, fmt_a).to(acc_dtype)
    fb = dequant_factor(scale_b, fmt_b).to(acc_dtype)
    out = acc * fa * (fb.t() if fb.ndim == 2 else fb)
    if bias is not None:
        out = out + bias.to(acc_dtype)
    return out.to(out_dtype)
