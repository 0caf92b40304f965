"""The kernels as ``torch.library`` custom ops (``torch.ops.lowbit.*``) with fake kernels.

Under ``torch.compile`` the layers above call these ops, which dynamo treats as opaque nodes with known
output shapes, so a compiled model never graph-breaks on a Triton launch or a Python-side check. In eager
mode the same wrappers call the Python functions directly and skip the custom-op dispatch overhead.

**Compiled quantization** (:func:`set_compiled_quantize`, env ``LOWBIT_COMPILED_QUANTIZE``): with ``"kernel"``
(the default) a compiled model calls lowbit's Triton quantizers as opaque ops; with ``"inductor"`` it traces the
PyTorch reference numerics instead (the same float32 operations, so the same codes), which inductor can fuse
into the op that produces the tensor (LayerNorm, GELU, its backward): one pass over an activation instead of
two. ``"mixed"`` traces only the ops whose twin inductor fused faster than lowbit's kernel ran on the H100
(:data:`TRACED_WHEN_MIXED`: the activation's forward producer) and calls the kernels for the rest. The matmuls stay
lowbit's ops in every mode. The mode is read while tracing: set it before compiling. On an H100 ``"inductor"`` made
the ViT-H/14 training step slower (0.93x vs 0.99x bf16 for fp8-switchback,
bench/results/h100/step-vit-h-14-compiled-quantize.md), and the fused LN→MLP block 1.022x against the kernels'
1.046x (row-flow-probe-2.log), hence the default; ``"mixed"`` is measured only as that block, on an H200 (1.20x
against the kernels' 1.18x, row-flow-probe-3-h200.md), not in a training step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from lowbit.kernels import _inductor_rows
from lowbit.kernels import matmul as _matmul
from lowbit.kernels import producers as _producers
from lowbit.kernels import quantizers as _quantize
from lowbit.kernels._common import storage_dtype

# Registered with the low-level ``torch.library.Library`` API rather than ``torch.library.custom_op``: the layers
# call these ops inside their own autograd.Function, so the ops need no autograd kernel, and the plain Python
# kernel costs about half the dispatch time per call (bench/results/cpu/op-overhead.md: +12-23 µs over a direct
# call against +34-44 µs; torch.compile'd models pay it once per op call).
_LIB = torch.library.Library("lowbit", "DEF")


def _define(schema: str, fake: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``lowbit::<schema>`` with the decorated function as its kernel on every device
    (``CompositeExplicitAutograd``) and ``fake`` as its meta kernel for torch.compile; the tags and the
    torch.compile treatment are those of ``torch.library.custom_op``."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = schema.split("(", 1)[0]
        _LIB.define(schema, tags=(torch.Tag.pt2_compliant_tag,))  # as custom_op would: dynamo may trace it
        _LIB.impl(name, fn, "CompositeExplicitAutograd")
        torch.library.register_fake(f"lowbit::{name}", fake, lib=_LIB)
        return fn

    return register


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


@_define("quantize(Tensor x, str fmt, str granularity, bool transpose) -> (Tensor, Tensor)", _quantize_fake)
def _quantize_op(x: torch.Tensor, fmt: str, granularity: str, transpose: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize.quantize(x, fmt, granularity, transpose=transpose)  # type: ignore[arg-type]


def _quantize_dual_fake(x, fmt):
    dt = storage_dtype(fmt)
    return x.new_empty(tuple(x.shape), dtype=dt), x.new_empty(tuple(reversed(x.shape)), dtype=dt), \
        x.new_empty((), dtype=torch.float32)


@_define("quantize_dual(Tensor x, str fmt) -> (Tensor, Tensor, Tensor)", _quantize_dual_fake)
def _quantize_dual_op(x: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _quantize.quantize_dual(x, fmt)  # type: ignore[arg-type]


def _dequantize_fake(q, scale, fmt, granularity, dtype):
    return q.new_empty(q.shape, dtype=dtype)


@_define("dequantize(Tensor q, Tensor scale, str fmt, str granularity, ScalarType dtype) -> Tensor",
         _dequantize_fake)
def _dequantize_op(q: torch.Tensor, scale: torch.Tensor, fmt: str, granularity: str,
                   dtype: torch.dtype) -> torch.Tensor:
    return _quantize.dequantize(q, scale, fmt, granularity, dtype)  # type: ignore[arg-type]


def _scaled_mm_fake(qa, qb, scale_a, scale_b, bias, out_dtype):
    return qa.new_empty((qa.shape[0], qb.shape[0]), dtype=out_dtype)


@_define("scaled_mm(Tensor qa, Tensor qb, Tensor scale_a, Tensor scale_b, Tensor? bias, ScalarType out_dtype) "
         "-> Tensor", _scaled_mm_fake)
def _scaled_mm_op(qa: torch.Tensor, qb: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                  bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    return _matmul.scaled_mm(qa, qb, scale_a, scale_b, bias=bias, out_dtype=out_dtype)


def _layernorm_quantize_fake(x, weight, bias, eps, fmt, out_dtype, want_h):
    m, d = x.shape
    sd = _producers.stat_dtype(x)
    return (x.new_empty((m, d), dtype=storage_dtype(fmt)), x.new_empty((m, 1), dtype=torch.float32),
            x.new_empty((m, d) if want_h else (0,), dtype=out_dtype), x.new_empty((m, 1), dtype=sd),
            x.new_empty((m, 1), dtype=sd))


@_define("layernorm_quantize(Tensor x, Tensor? weight, Tensor? bias, float eps, str fmt, ScalarType out_dtype, "
         "bool want_h) -> (Tensor, Tensor, Tensor, Tensor, Tensor)", _layernorm_quantize_fake)
def _layernorm_quantize_op(x, weight, bias, eps: float, fmt: str, out_dtype: torch.dtype, want_h: bool):
    return _producers.layernorm_quantize(x, weight, bias, eps, fmt, out_dtype=out_dtype,  # type: ignore[arg-type]
                                         want_h=want_h)


def _act_quantize_fake(a, dg, activation, fmt, out_dtype, want_out, colsum):
    m, n = a.shape
    return (a.new_empty((m, n) if want_out else (0,), dtype=out_dtype), a.new_empty((m, n), dtype=storage_dtype(fmt)),
            a.new_empty((m, 1), dtype=torch.float32), a.new_empty((n,) if colsum else (0,), dtype=torch.float32))


@_define("act_quantize(Tensor a, Tensor? dg, str activation, str fmt, ScalarType out_dtype, bool want_out, "
         "bool colsum) -> (Tensor, Tensor, Tensor, Tensor)", _act_quantize_fake)
def _act_quantize_op(a, dg, activation: str, fmt: str, out_dtype: torch.dtype, want_out: bool, colsum: bool):
    if dg is None:
        g, q, s = _producers.act_quantize(a, activation, fmt, out_dtype=out_dtype,  # type: ignore[arg-type]
                                          want_g=want_out)
        return g, q, s, s.new_empty((0,))
    return _producers.act_backward_quantize(dg, a, activation, fmt, out_dtype=out_dtype,  # type: ignore[arg-type]
                                            colsum=colsum)


def _quantize_rows_colsum_fake(t, fmt):
    m, n = t.shape
    return (t.new_empty((m, n), dtype=storage_dtype(fmt)), t.new_empty((m, 1), dtype=torch.float32),
            t.new_empty((n,), dtype=torch.float32))


@_define("quantize_rows_colsum(Tensor t, str fmt) -> (Tensor, Tensor, Tensor)", _quantize_rows_colsum_fake)
def _quantize_rows_colsum_op(t, fmt: str):
    return _producers.quantize_rows_colsum(t, fmt)  # type: ignore[arg-type]


COMPILED_QUANTIZE: tuple[str, ...] = ("kernel", "inductor", "mixed")
# "mixed": the ops whose PyTorch twin inductor fused faster than lowbit's kernel ran, on the H100 at ViT-H widths
# (bench/results/h100/row-flow-probe-2.log: GELU+quantize 0.49 ms traced vs 0.83 ms kernel), are traced; every other
# op (LayerNorm+quantize 0.10 ms kernel, GELU'+quantize+colsum 0.78 vs 0.74, the standalone quantizers, which made
# the compiled step slower when traced) calls lowbit's kernel. Measured as a block on an H200 only (1.20x vs the
# kernels' 1.18x bf16), not in a step.
TRACED_WHEN_MIXED: frozenset[str] = frozenset({"act_quantize"})


def _check_mode(mode: str, where: str) -> str:
    if mode not in COMPILED_QUANTIZE:
        raise ValueError(f"{where}: compiled quantization must be one of {COMPILED_QUANTIZE}, got {mode!r}")
    return mode


_compiled_quantize = _check_mode(os.environ.get("LOWBIT_COMPILED_QUANTIZE", "kernel"), "LOWBIT_COMPILED_QUANTIZE")
_inductor_rows._from_env()  # LOWBIT_PERSISTENT_ROWS: the traced quantizers' rows in one pass (see that module)


def compiled_quantize() -> str:
    """How a compiled model quantizes: ``"kernel"`` (lowbit's Triton ops) or ``"inductor"`` (fusable reference)."""
    return _compiled_quantize


def set_compiled_quantize(mode: str) -> str:
    """Set how models compiled from now on quantize (see the module docstring); returns the previous mode."""
    global _compiled_quantize
    previous, _compiled_quantize = _compiled_quantize, _check_mode(mode, "set_compiled_quantize")
    return previous


@contextmanager
def compiled_quantize_mode(mode: str) -> Iterator[None]:
    """``with compiled_quantize_mode("inductor"): compiled(x)``: the mode for the compilations inside."""
    previous = set_compiled_quantize(mode)
    try:
        yield
    finally:
        set_compiled_quantize(previous)


def _as_op(op: str) -> bool:
    """Call the opaque custom op ``op``: only while compiling, in ``"kernel"`` mode, and in ``"mixed"`` mode unless
    ``op`` is one of :data:`TRACED_WHEN_MIXED`."""
    if not torch.compiler.is_compiling() or _compiled_quantize == "inductor":
        return False
    return _compiled_quantize == "kernel" or op not in TRACED_WHEN_MIXED


def _backend() -> str:
    """The reference numerics when inductor is to fuse them, else the usual device choice."""
    return "torch" if torch.compiler.is_compiling() else "auto"


def quantize(x: torch.Tensor, fmt: str, granularity: str, transpose: bool = False):
    """:func:`lowbit.kernels.quantize`, as a custom op while compiling (or traced, in ``"inductor"`` mode)."""
    if _as_op("quantize"):
        return torch.ops.lowbit.quantize(x, fmt, granularity, transpose)
    return _quantize.quantize(x, fmt, granularity, transpose=transpose, backend=_backend())  # type: ignore[arg-type]


def quantize_dual(x: torch.Tensor, fmt: str):
    """:func:`lowbit.kernels.quantize_dual`, as a custom op while compiling (or traced, in ``"inductor"`` mode)."""
    if _as_op("quantize_dual"):
        return torch.ops.lowbit.quantize_dual(x, fmt)
    return _quantize.quantize_dual(x, fmt, backend=_backend())  # type: ignore[arg-type]


def dequantize(q: torch.Tensor, scale: torch.Tensor, fmt: str, granularity: str, dtype: torch.dtype):
    """:func:`lowbit.kernels.dequantize`, as a custom op while compiling (or traced, in ``"inductor"`` mode)."""
    if _as_op("dequantize"):
        return torch.ops.lowbit.dequantize(q, scale, fmt, granularity, dtype)
    return _quantize.dequantize(q, scale, fmt, granularity, dtype, backend=_backend())  # type: ignore[arg-type]


def scaled_mm(qa, qb, scale_a, scale_b, bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """:func:`lowbit.kernels.matmul.scaled_mm`, as a custom op while compiling."""
    if torch.compiler.is_compiling():
        return torch.ops.lowbit.scaled_mm(qa, qb, scale_a, scale_b, bias, out_dtype)
    return _matmul.scaled_mm(qa, qb, scale_a, scale_b, bias=bias, out_dtype=out_dtype)


def layernorm_quantize(x, weight, bias, eps: float, fmt: str, out_dtype: torch.dtype, want_h: bool):
    """:func:`lowbit.kernels.producers.layernorm_quantize`, as a custom op while compiling (or its PyTorch twin
    traced, in ``"inductor"`` mode): ``(codes, scale, h or empty, mean, rstd)``."""
    if _as_op("layernorm_quantize"):
        return torch.ops.lowbit.layernorm_quantize(x, weight, bias, eps, fmt, out_dtype, want_h)
    return _producers.layernorm_quantize(x, weight, bias, eps, fmt, out_dtype=out_dtype,  # type: ignore[arg-type]
                                         want_h=want_h, backend=_backend())  # type: ignore[arg-type]


def act_quantize(a, activation: str, fmt: str, out_dtype: torch.dtype, want_g: bool):
    """:func:`lowbit.kernels.producers.act_quantize` (custom op while compiling): ``(g or empty, codes, scale)``."""
    if _as_op("act_quantize"):
        g, q, s, _ = torch.ops.lowbit.act_quantize(a, None, activation, fmt, out_dtype, want_g, False)
        return g, q, s
    return _producers.act_quantize(a, activation, fmt, out_dtype=out_dtype, want_g=want_g,  # type: ignore[arg-type]
                                   backend=_backend())  # type: ignore[arg-type]


def act_backward_quantize(dg, a, activation: str, fmt: str, out_dtype: torch.dtype, colsum: bool):
    """:func:`lowbit.kernels.producers.act_backward_quantize` (custom op while compiling):
    ``(dA, codes, scale, column sums or empty)``."""
    if _as_op("act_backward_quantize"):
        return torch.ops.lowbit.act_quantize(a, dg, activation, fmt, out_dtype, True, colsum)
    return _producers.act_backward_quantize(dg, a, activation, fmt, out_dtype=out_dtype,  # type: ignore[arg-type]
                                            colsum=colsum, backend=_backend())  # type: ignore[arg-type]


def quantize_rows_colsum(t, fmt: str):
    """:func:`lowbit.kernels.producers.quantize_rows_colsum` (custom op while compiling): ``(codes, scale, colsum)``."""
    if _as_op("quantize_rows_colsum"):
        return torch.ops.lowbit.quantize_rows_colsum(t, fmt)
    return _producers.quantize_rows_colsum(t, fmt, backend=_backend())  # type: ignore[arg-type]
