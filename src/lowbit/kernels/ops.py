"""The kernels as ``torch.library`` custom ops (``torch.ops.lowbit.*``) with fake kernels.

Under ``torch.compile`` the layers above call these ops, which dynamo treats as opaque nodes with known
output shapes, so a compiled model never graph-breaks on a Triton launch or a Python-side check. In eager
mode the same wrappers call the Python functions directly and skip the custom-op dispatch overhead.
"""

from __future__ import annotations

import torch

from lowbit.kernels import matmul as _matmul
from lowbit.kernels import quantizers as _quantize
from lowbit.kernels._common import storage_dtype


@torch.library.custom_op("lowbit::quantize", mutates_args=())
def _quantize_op(x: torch.Tensor, fmt: str, granularity: str, transpose: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize.quantize(x, fmt, granularity, transpose=transpose)  # type: ignore[arg-type]


@_quantize_op.register_fake
def _quantize_fake(x, fmt, granularity, transpose):
    qshape = tuple(reversed(x.shape)) if transpose else tuple(x.shape)
    if granularity == "tensor":
        sshape: tuple[int, ...] = ()
    elif granularity == "row":
        sshape = (*x.shape[:-1], 1)
    elif transpose:
        sshape = (x.shape[-1], 1)
    else:
        sshape = (1,) * (x.ndim - 1) + (x.shape[-1],)
    return x.new_empty(qshape, dtype=storage_dtype(fmt)), x.new_empty(sshape, dtype=torch.float32)


@torch.library.custom_op("lowbit::quantize_dual", mutates_args=())
def _quantize_dual_op(x: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _quantize.quantize_dual(x, fmt)  # type: ignore[arg-type]


@_quantize_dual_op.register_fake
def _quantize_dual_fake(x, fmt):
    dt = storage_dtype(fmt)
    return x.new_empty(tuple(x.shape), dtype=dt), x.new_empty(tuple(reversed(x.shape)), dtype=dt), \
        x.new_empty((), dtype=torch.float32)


@torch.library.custom_op("lowbit::dequantize", mutates_args=())
def _dequantize_op(q: torch.Tensor, scale: torch.Tensor, fmt: str, granularity: str,
                   dtype: torch.dtype) -> torch.Tensor:
    return _quantize.dequantize(q, scale, fmt, granularity, dtype)  # type: ignore[arg-type]


@_dequantize_op.register_fake
def _dequantize_fake(q, scale, fmt, granularity, dtype):
    return q.new_empty(q.shape, dtype=dtype)


@torch.library.custom_op("lowbit::scaled_mm", mutates_args=())
def _scaled_mm_op(qa: torch.Tensor, qb: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                  bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    return _matmul.scaled_mm(qa, qb, scale_a, scale_b, bias=bias, out_dtype=out_dtype)


@_scaled_mm_op.register_fake
def _scaled_mm_fake(qa, qb, scale_a, scale_b, bias, out_dtype):
    return qa.new_empty((qa.shape[0], qb.shape[0]), dtype=out_dtype)


def quantize(x: torch.Tensor, fmt: str, granularity: str, transpose: bool = False):
    """:func:`lowbit.kernels.quantize`, as a custom op while compiling."""
    if torch.compiler.is_compiling():
        return torch.ops.lowbit.quantize(x, fmt, granularity, transpose)
    return _quantize.quantize(x, fmt, granularity, transpose=transpose)  # type: ignore[arg-type]


def quantize_dual(x: torch.Tensor, fmt: str):
    """:func:`lowbit.kernels.quantize_dual`, as a custom op while compiling."""
    if torch.compiler.is_compiling():
        return torch.ops.lowbit.quantize_dual(x, fmt)
    return _quantize.quantize_dual(x, fmt)  # type: ignore[arg-type]


def dequantize(q: torch.Tensor, scale: torch.Tensor, fmt: str, granularity: str, dtype: torch.dtype):
    """:func:`lowbit.kernels.dequantize`, as a custom op while compiling."""
    if torch.compiler.is_compiling():
        return torch.ops.lowbit.dequantize(q, scale, fmt, granularity, dtype)
    return _quantize.dequantize(q, scale, fmt, granularity, dtype)  # type: ignore[arg-type]


def scaled_mm(qa, qb, scale_a, scale_b, bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """:func:`lowbit.kernels.matmul.scaled_mm`, as a custom op while compiling."""
    if torch.compiler.is_compiling():
        return torch.ops.lowbit.scaled_mm(qa, qb, scale_a, scale_b, bias, out_dtype)
    return _matmul.scaled_mm(qa, qb, scale_a, scale_b, bias=bias, out_dtype=out_dtype)
