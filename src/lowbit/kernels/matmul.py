"""Public scaled matmul on int8 / fp8 codes: ``(qa @ qbᵀ) · dequant(scale_a) · dequant(scale_b)ᵀ + bias``.

Both operands are row-major with the inner dimension last (``qa [M, K]``, ``qb [N, K]``, like ``x`` and an
``nn.Linear`` weight), which is the K-major layout that Hopper's 8-bit tensor-core instructions need. Scales
are what the quantizers return: ``[M, 1]`` / ``[N, 1]`` (one per row) or ``[]`` (per tensor).
"""

from __future__ import annotations

from typing import Literal

import torch

from lowbit.kernels import reference
from lowbit.kernels._common import FP8_FORMATS, Format, use_triton

MatmulBackend = Literal["auto", "torch", "triton", "cublas"]


def code_format(t: torch.Tensor, op: str) -> Format:
    if t.dtype == torch.int8:
        return "int8"
    if t.dtype in FP8_FORMATS:
        return FP8_FORMATS[t.dtype]
    raise TypeError(f"{op}: codes must be int8, float8_e4m3fn or float8_e5m2, got {t.dtype}")


def _normalize_scale(scale: torch.Tensor, rows: int, name: str, op: str) -> torch.Tensor:
    if not isinstance(scale, torch.Tensor) or not scale.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating tensor")
    if scale.ndim == 2 and tuple(scale.shape) == (rows, 1):
        return scale.float()
    if scale.numel() == 1:
        return scale.float().reshape(())
    raise ValueError(f"{op}: {name} must have shape [{rows}, 1] (one per row) or [] (per tensor), "
                     f"got {tuple(scale.shape)}")


def scaled_mm(
    qa: torch.Tensor,
    qb: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    backend: MatmulBackend = "auto",
) -> torch.Tensor:
    """Matmul of quantized operands with the dequantization, bias and cast fused (Triton on CUDA).

    ``backend``: ``"auto"`` (Triton for CUDA tensors, PyTorch elsewhere), ``"triton"``, ``"torch"`` (the
    reference: codes multiplied in float32), or ``"cublas"`` (``torch._int_mm`` / ``torch._scaled_mm``, for
    comparison in benchmarks).
    """
    op = "scaled_mm"
    fa, fb = code_format(qa, op), code_format(qb, op)
    if (fa == "int8") != (fb == "int8"):
        raise TypeError(f"{op}: cannot multiply int8 codes with fp8 codes ({qa.dtype} @ {qb.dtype})")
    if qa.ndim != 2 or qb.ndim != 2 or qa.shape[1] != qb.shape[1]:
        raise ValueError(f"{op}: expected qa [M, K] and qb [N, K] with the same K, got {tuple(qa.shape)} and "
                         f"{tuple(qb.shape)}")
    if qa.device != qb.device:
        raise ValueError(f"{op}: operands on different devices ({qa.device}, {qb.device})")
    if out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{op}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    M, N = qa.shape[0], qb.shape[0]
    sa = _normalize_scale(scale_a, M, "scale_a", op)
    sb = _normalize_scale(scale_b, N, "scale_b", op)
    if bias is not None and (bias.shape != (N,) or bias.device != qa.device):
        raise ValueError(f"{op}: bias must have shape [{N}] on {qa.device}, got {tuple(bias.shape)} on {bias.device}")
    if backend == "cublas":
        return _cublas(qa, qb, sa, sb, fa, fb, bias, out_dtype)
    if M == 0 or N == 0 or qa.shape[1] == 0 or not use_triton(qa, backend, op):
        return reference.scaled_mm(qa, qb, sa, sb, fa, fb, bias, out_dtype)
    from lowbit.kernels import triton_matmul

    return triton_matmul.scaled_mm(qa, qb, sa, sb, bias, out_dtype)


def _cublas(qa, qb, sa, sb, fa: Format, fb: Format, bias, out_dtype) -> torch.Tensor:
    """Vendor-library path: ``torch._int_mm`` + a PyTorch epilogue, or ``torch._scaled_mm`` for fp8."""
    if fa == "int8":
        acc = torch._int_mm(qa, qb.t())
        out = acc.float() * reference.dequant_factor(sa, fa) * reference.dequant_factor(sb, fb).reshape(1, -1)
        if bias is not None:
            out = out + bias.float()
        return out.to(out_dtype)
    inv_a = reference.dequant_factor(sa, fa)
    inv_b = reference.dequant_factor(sb, fb)
    if inv_a.ndim == 2 or inv_b.ndim == 2:  # rowwise _scaled_mm wants both scales rowwise
        inv_a = inv_a.expand(qa.shape[0], 1).contiguous() if inv_a.ndim == 0 else inv_a
        inv_b = (inv_b.expand(qb.shape[0], 1) if inv_b.ndim == 0 else inv_b).reshape(1, -1).contiguous()
    return torch._scaled_mm(qa, qb.t(), scale_a=inv_a, scale_b=inv_b, bias=bias, out_dtype=out_dtype)
