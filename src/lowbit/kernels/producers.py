"""Quantizing producers (SPEC §10): LayerNorm, the activation and its backward, each also writing the row-wise
int8 / fp8 codes + row scales of its 16-bit output in the same pass, for the plain 8-bit GEMM that reads them.

Each function dispatches to the Triton kernel (:mod:`lowbit.kernels._triton_producers`) for CUDA tensors and to its
pure-PyTorch twin otherwise (``backend="torch"`` forces the twin, ``"triton"`` the kernel, also on CPU tensors under
``TRITON_INTERPRET=1``). Both give codes and scales equal, bit for bit, to :func:`lowbit.kernels.quantize` of the
16-bit output they return (row-wise, along the last dim). The twins compute the 16-bit outputs with the PyTorch ops
an unfused module runs (``native_layer_norm``, ``F.gelu``, autograd's ``gelu_backward``), so on the CPU the fused
data flow computes what the per-linear layers compute; the kernels agree with them to the rounding of the 16-bit
output (another order of the float32 statistics, another erf).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.kernels import _reference as reference
from lowbit.kernels._common import (
    ACTIVATIONS,
    FLOAT_DTYPES,
    Backend,
    Format,
    checks_enabled,
    raise_if_nonfinite,
    use_triton,
)

__all__ = ["act_backward", "act_backward_quantize", "act_forward", "act_quantize", "layernorm_quantize",
           "quantize_rows_colsum"]

ROW_FORMATS: tuple[str, ...] = ("int8", "e4m3", "e5m2")
# The widest LayerNorm row one program of the kernel holds (wider rows take the PyTorch twin).
LN_MAX_WIDTH = 16384


def act_forward(z: torch.Tensor, activation: str) -> torch.Tensor:
    """``act(z)`` in ``z``'s dtype (the ops ``nn.GELU`` / QuickGELU modules run)."""
    if activation == "gelu":
        return F.gelu(z)
    if activation == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    if activation == "quick_gelu":
        return z * torch.sigmoid(1.702 * z)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def act_backward(dg: torch.Tensor, a: torch.Tensor, activation: str) -> torch.Tensor:
    """``dg · act'(a)``, with the ops (and so the rounding) autograd uses for :func:`act_forward`."""
    if activation == "gelu":
        return torch.ops.aten.gelu_backward(dg, a, approximate="none")
    if activation == "gelu_tanh":
        return torch.ops.aten.gelu_backward(dg, a, approximate="tanh")
    if activation == "quick_gelu":
        s = torch.sigmoid(1.702 * a)
        return dg * s + torch.ops.aten.sigmoid_backward(dg * a, s) * 1.702
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def stat_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of the mean / rstd ``torch.native_layer_norm`` returns for ``x`` (its backward wants the same):
    float32 on CUDA, the input's own dtype on the CPU."""
    return torch.float32 if x.is_cuda else x.dtype


def _check(op: str, fmt: str, *tensors: torch.Tensor | None) -> None:
    if fmt not in ROW_FORMATS:
        raise ValueError(f"{op}: format must be one of {ROW_FORMATS}, got {fmt!r}")
    for t in tensors:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: expected float32, float16 or bfloat16 tensors, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
    t0 = tensors[0]
    if t0 is not None and t0.ndim != 2:
        raise ValueError(f"{op}: expected a 2-D [tokens, features] tensor, got shape {tuple(t0.shape)}")


def layernorm_quantize(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    fmt: Format,
    *,
    out_dtype: torch.dtype | None = None,
    want_h: bool = True,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm over the last dim of 2-D ``x`` and the row-wise codes of its output, in one pass.

    Returns ``(codes [M, D], scale [M, 1], h, mean [M, 1], rstd [M, 1])``: ``h`` is the output rounded to
    ``out_dtype`` (default ``x.dtype``), or an empty tensor without ``want_h``; the codes are those of
    ``quantize(h, fmt, "row")``. ``mean``/``rstd`` are what ``native_layer_norm_backward`` takes.
    """
    op = f"layernorm_quantize[{fmt}]"
    _check(op, fmt, x, weight, bias)
    d = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (d,):
            raise ValueError(f"{op}: {name} must have shape [{d}], got {tuple(t.shape)}")
    out_dtype = out_dtype or x.dtype
    if checks_enabled(None):
        raise_if_nonfinite(x, op)
    if x.numel() == 0 or d > LN_MAX_WIDTH or not use_triton(x, backend, op):
        return layernorm_quantize_reference(x, weight, bias, eps, fmt, out_dtype=out_dtype, want_h=want_h)
    from lowbit.kernels import _triton_layernorm as tln

    q, s, h, mean, rstd = tln.layernorm_quantize(x.contiguous(), weight, bias, eps, fmt, want_h=want_h,
                                                 out_dtype=out_dtype)
    sd = stat_dtype(x)
    return q, s, h, mean.to(sd), rstd.to(sd)


def layernorm_quantize_reference(x, weight, bias, eps: float, fmt: Format, *, out_dtype: torch.dtype,
                                 want_h: bool):
    """PyTorch twin of :func:`layernorm_quantize` (``native_layer_norm``, then the reference row quantizer)."""
    y, mean, rstd = torch.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)
    h = y.to(out_dtype)
    q, s = reference.quantize(h, fmt, "row")
    return q, s, (h if want_h else h.new_empty((0,))), mean, rstd


def _act(a: torch.Tensor, dg: torch.Tensor | None, activation: str, fmt: Format, out_dtype, want_out: bool,
         colsum: bool, backend: Backend, op: str):
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {ACTIVATIONS}, got {activation!r}")
    _check(op, fmt, a, dg)
    if dg is not None and dg.shape != a.shape:
        raise ValueError(f"{op}: the gradient {tuple(dg.shape)} and the pre-activation {tuple(a.shape)} differ")
    out_dtype = out_dtype or (dg if dg is not None else a).dtype
    if checks_enabled(None):
        raise_if_nonfinite(a, op)
    if a.numel() == 0 or not use_triton(a, backend, op):
        return act_quantize_reference(a, dg, activation, fmt, out_dtype=out_dtype, want_out=want_out, colsum=colsum)
    from lowbit.kernels import _triton_producers as tp

    out, q, s, cs = tp.act_quantize(a.contiguous(), dg.contiguous() if dg is not None else None, activation, fmt,
                                    want_out=want_out, colsum=colsum, out_dtype=out_dtype)
    return (out if want_out else out[:0]), q, s, (cs if colsum else s.new_empty((0,)))


def act_quantize_reference(a, dg, activation: str, fmt: Format, *, out_dtype: torch.dtype, want_out: bool,
                           colsum: bool):
    """PyTorch twin of :func:`act_quantize` / :func:`act_backward_quantize`."""
    if dg is None:
        y = act_forward(a, activation).to(out_dtype)
    else:
        y = act_backward(dg, a, activation).to(out_dtype)
    q, s = reference.quantize(y, fmt, "row")
    cs = y.sum(0, dtype=torch.float32) if colsum else s.new_empty((0,))
    return (y if want_out else y.new_empty((0,))), q, s, cs


def act_quantize(
    a: torch.Tensor, activation: str, fmt: Format, *, out_dtype: torch.dtype | None = None, want_g: bool = True,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``g = act(a)`` (2-D, rounded to ``out_dtype``, default ``a.dtype``) and its row-wise codes in one pass.

    Returns ``(g or an empty tensor without want_g, codes [M, N], scale [M, 1])``."""
    g, q, s, _ = _act(a, None, activation, fmt, out_dtype, want_g, False, backend, f"act_quantize[{fmt}]")
    return g, q, s


def act_backward_quantize(
    dg: torch.Tensor, a: torch.Tensor, activation: str, fmt: Format, *, out_dtype: torch.dtype | None = None,
    colsum: bool = False, backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dA = dg · act'(a)`` (rounded to ``out_dtype``, default ``dg.dtype``), its row-wise codes and, with
    ``colsum``, its float32 column sums (fc1's bias gradient; else an empty tensor), in one pass.

    Returns ``(dA, codes [M, N], scale [M, 1], colsum [N])``."""
    return _act(a, dg, activation, fmt, out_dtype, True, colsum, backend, f"act_backward_quantize[{fmt}]")



def quantize_rows_colsum(
    t: torch.Tensor, fmt: Format, *, backend: Backend = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise codes of 2-D ``t`` (exactly :func:`lowbit.kernels.quantize`'s) and its float32 column sums, in one
    read of ``t``: a layer's output gradient dY becomes its dgrad operand and its bias gradient together.

    Returns ``(codes [M, N], scale [M, 1], colsum [N])``."""
    op = f"quantize_rows_colsum[{fmt}]"
    _check(op, fmt, t)
    if checks_enabled(None):
        raise_if_nonfinite(t, op)
    if t.numel() == 0 or not use_triton(t, backend, op):
        q, s = reference.quantize(t, fmt, "row")
        return q, s, t.sum(0, dtype=torch.float32)
    from lowbit.kernels import _triton_producers as tp

    _, q, s, cs = tp.act_quantize(t.contiguous(), None, None, fmt, want_out=False, colsum=True, out_dtype=t.dtype)
    return q, s, cs
