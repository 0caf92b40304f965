"""Public quantizers: int8 and fp8, row / column / tensor scaling, with optional fused transpose.

Each dispatches to the Triton kernels for CUDA tensors (``backend="auto"``) and to the PyTorch reference
otherwise; both compute the same codes and scales (see :mod:`lowbit.kernels._reference` for the numerics).

**NaN/Inf.** The default is *fast mode*: no check, hence no device-to-host synchronisation on the training
hot path. Non-finite values are not turned into finite garbage: the group that holds them gets a non-finite
scale, so everything dequantized or multiplied from it is NaN/Inf, and the trainer's loss check catches it.
*Checked mode* (``check=True`` or ``LOWBIT_CHECK_FINITE=1``) raises ``ValueError`` instead.
"""

from __future__ import annotations

import torch

from lowbit.kernels import _reference as reference
from lowbit.kernels._common import (
    FP8_DTYPES,
    Backend,
    Format,
    Granularity,
    check_granularity,
    check_input,
    checks_enabled,
    fp8_format,
    raise_if_nonfinite,
    storage_dtype,
    use_triton,
)


def _empty_result(x: torch.Tensor, fmt: Format, granularity: Granularity, transpose: bool):
    q = torch.zeros(x.shape[::-1] if transpose else x.shape, dtype=storage_dtype(fmt), device=x.device)
    scale = reference.scale_from_absmax(reference.absmax(x, granularity), fmt)
    if transpose and granularity == "column":
        scale = scale.reshape(-1, 1)
    return q, scale


def quantize(
    x: torch.Tensor,
    fmt: Format,
    granularity: Granularity,
    *,
    transpose: bool = False,
    check: bool | None = None,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generic quantizer behind the public functions: returns ``(codes, float32 scale)``.

    Rows are the last dimension; leading dimensions are flattened. ``transpose=True`` (2-D only, column- or
    tensor-wise) returns the codes of ``xᵀ`` (contiguous) and the scale shaped for ``xᵀ``.
    """
    op = f"quantize[{fmt}, {granularity}{', transpose' if transpose else ''}]"
    check_input(x, op)
    check_granularity(granularity, x.ndim, op)
    if transpose and (x.ndim != 2 or granularity == "row"):
        raise ValueError(f"{op}: the fused transpose takes a 2-D tensor and column or tensor scaling, "
                         f"got {x.ndim}-D with {granularity!r}")
    if checks_enabled(check):
        raise_if_nonfinite(x, op)
    if x.numel() == 0:
        return _empty_result(x, fmt, granularity, transpose)
    if not use_triton(x, backend, op):
        if transpose:
            return reference.quantize_transpose(x, fmt, granularity)
        return reference.quantize(x, fmt, granularity)

    from lowbit.kernels import _triton_quant as triton_quant

    x2d = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])  # (each reshape is a host-side op on the hot path)
    if granularity == "row":
        q, scale = triton_quant.quantize_rows(x2d, fmt)
        return (q, scale) if x.ndim == 2 else (q.reshape(x.shape), scale.reshape(*x.shape[:-1], 1))
    per_column = granularity == "column"
    q, scale = triton_quant.quantize_scaled(x2d, fmt, per_column, transpose)
    if transpose:
        return q, scale.reshape(-1, 1) if per_column else scale
    if per_column:
        scale = scale.reshape((1,) * (x.ndim - 1) + (x.shape[-1],))
    return q.reshape(x.shape), scale


def quantize_dual(
    x: torch.Tensor, fmt: Format, *, check: bool | None = None, backend: Backend = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tensor-wise quantization of 2-D ``x`` into both layouts at once: ``(codes of x, codes of xᵀ, scale)``.

    The codes are exactly those of ``quantize(x, fmt, "tensor")`` and of its ``transpose=True`` twin (one
    scale serves both), from one absmax pass instead of two: ``x`` is read three times instead of four. Tensor-wise
    recipes need both layouts of X (forward and wgrad) and of dY (dgrad and wgrad).
    """
    op = f"quantize_dual[{fmt}, tensor]"
    check_input(x, op)
    if x.ndim != 2:
        raise ValueError(f"{op}: takes a 2-D tensor, got {x.ndim}-D of shape {tuple(x.shape)}")
    if checks_enabled(check):
        raise_if_nonfinite(x, op)
    if x.numel() == 0 or not use_triton(x, backend, op):
        q, scale = quantize(x, fmt, "tensor", check=False, backend="torch")
        return q, q.t().contiguous(), scale
    from lowbit.kernels import _triton_quant as triton_quant

    return triton_quant.quantize_scaled(x, fmt, per_column=False, transpose=False, both=True)


def quantize_int8(
    x: torch.Tensor, granularity: Granularity = "row", *, check: bool | None = None, backend: Backend = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int8 quantization; returns ``(q int8, absmax float32)``.

    ``q = round_half_even(127 · x / absmax)`` clipped to ±127, one absmax per row (shape ``[..., 1]``), per
    column (``[1, ..., K]``) or per tensor (``[]``). See the module docstring for NaN/Inf handling.
    """
    return quantize(x, "int8", granularity, check=check, backend=backend)


def quantize_int8_transpose(
    x: torch.Tensor, granularity: Granularity = "column", *, check: bool | None = None, backend: Backend = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize 2-D ``x`` column- or tensor-wise and transpose in the same pass: ``(q of xᵀ, absmax for xᵀ)``."""
    return quantize(x, "int8", granularity, transpose=True, check=check, backend=backend)


def quantize_fp8(
    x: torch.Tensor,
    fp8_dtype: torch.dtype = torch.float8_e4m3fn,
    granularity: Granularity = "tensor",
    *,
    check: bool | None = None,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Saturating fp8 quantization; returns ``(q fp8, scale float32)`` with ``scale = fmax / absmax``.

    fmax is 448 for ``float8_e4m3fn`` and 57344 for ``float8_e5m2``; values round to nearest even.
    """
    return quantize(x, fp8_format(fp8_dtype), granularity, check=check, backend=backend)


def quantize_fp8_transpose(
    x: torch.Tensor,
    fp8_dtype: torch.dtype = torch.float8_e4m3fn,
    granularity: Granularity = "column",
    *,
    check: bool | None = None,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8 twin of :func:`quantize_int8_transpose`."""
    return quantize(x, fp8_format(fp8_dtype), granularity, transpose=True, check=check, backend=backend)


def _check_scale(q: torch.Tensor, scale: torch.Tensor, granularity: Granularity, op: str) -> None:
    check_granularity(granularity, q.ndim, op)
    if not isinstance(scale, torch.Tensor) or not scale.is_floating_point():
        raise TypeError(f"{op}: scale must be a floating tensor, got {getattr(scale, 'dtype', type(scale))}")
    if scale.device != q.device:
        raise ValueError(f"{op}: codes on {q.device} but scale on {scale.device}")
    if granularity == "row":
        expected = (*q.shape[:-1], 1)
    elif granularity == "column":
        expected = (1,) * (q.ndim - 1) + (q.shape[-1],)
    else:
        expected = ()
    if tuple(scale.shape) != expected and not (granularity == "tensor" and scale.numel() == 1):
        raise ValueError(f"{op}: {granularity}-wise scale for codes of shape {tuple(q.shape)} must have shape "
                         f"{expected}, got {tuple(scale.shape)}")


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    fmt: Format,
    granularity: Granularity,
    dtype: torch.dtype = torch.float32,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Generic dequantizer: ``q · absmax / 127`` (int8) or ``q / scale`` (fp8), cast to ``dtype``."""
    op = f"dequantize[{fmt}, {granularity}]"
    if q.dtype != storage_dtype(fmt):
        raise TypeError(f"{op}: expected codes of dtype {storage_dtype(fmt)}, got {q.dtype}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{op}: output dtype must be float32, float16 or bfloat16, got {dtype}")
    _check_scale(q, scale, granularity, op)
    if q.numel() == 0 or not use_triton(q, backend, op):
        return reference.dequantize(q, scale, fmt, dtype)
    from lowbit.kernels import _triton_quant as triton_quant

    q2d = q.contiguous().reshape(-1, q.shape[-1]) if q.ndim > 1 else q.reshape(1, -1)
    s2d = scale.reshape(-1, 1) if granularity == "row" else scale.reshape(1, -1)
    return triton_quant.dequantize(q2d, s2d, fmt, dtype).reshape(q.shape)


def dequantize_int8(
    q: torch.Tensor,
    scale: torch.Tensor,
    granularity: Granularity = "row",
    dtype: torch.dtype = torch.float32,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Inverse of :func:`quantize_int8`: ``q · absmax / 127`` as ``dtype``."""
    return dequantize(q, scale, "int8", granularity, dtype, backend=backend)


def dequantize_fp8(
    q: torch.Tensor,
    scale: torch.Tensor,
    granularity: Granularity = "tensor",
    dtype: torch.dtype = torch.float32,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Inverse of :func:`quantize_fp8`: ``q / scale`` as ``dtype``."""
    if q.dtype not in FP8_DTYPES.values():
        raise TypeError(f"dequantize_fp8: expected float8_e4m3fn or float8_e5m2 codes, got {q.dtype}")
    return dequantize(q, scale, fp8_format(q.dtype), granularity, dtype, backend=backend)
