"""Public scaled matmul on int8 / fp8 codes: ``(qa @ qbᵀ) · dequant(scale_a) · dequant(scale_b)ᵀ + bias``.

Both operands are row-major with the inner dimension last (``qa [M, K]``, ``qb [N, K]``, like ``x`` and an
``nn.Linear`` weight), which is the K-major layout that Hopper's 8-bit tensor-core instructions need. Scales
are what the quantizers return: ``[M, 1]`` / ``[N, 1]`` (one per row) or ``[]`` (per tensor).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

import torch

from lowbit.kernels import _reference as reference
from lowbit.kernels._common import SCALE_TENSOR, SCALE_VECTOR, Format, code_format, use_triton

MatmulBackend = Literal["auto", "torch", "triton", "cublas"]
__all__ = ["MatmulBackend", "code_format", "fp8_backend", "scaled_mm"]


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

    ``backend``: ``"auto"``, ``"triton"``, ``"torch"`` (the reference: codes multiplied in float32), or
    ``"cublas"`` (``torch._int_mm`` / ``torch._scaled_mm``). ``"auto"`` is PyTorch off CUDA and Triton for
    int8 on CUDA; for fp8 on CUDA it is :func:`fp8_backend`'s choice (by default whichever of Triton and
    ``torch._scaled_mm`` measured faster for the shape; ``LOWBIT_FP8_MATMUL=triton|cublas`` pins one).
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
    if backend == "auto" and fa != "int8" and qa.is_cuda and fp8_backend(qa, qb, sa, sb, bias, out_dtype) == "cublas":
        return _cublas(qa, qb, sa, sb, fa, fb, bias, out_dtype)
    return _triton(qa, qb, sa, sb, bias, out_dtype)


def _triton(qa, qb, sa, sb, bias, out_dtype) -> torch.Tensor:
    """lowbit's persistent Hopper GEMM (:mod:`lowbit.kernels.gemm`) with the dequantize + bias epilogue, launched
    directly: :func:`scaled_mm` has checked what :func:`lowbit.kernels.gemm.gemm` would check again (a host cost
    paid on every call of a training step)."""
    from lowbit.kernels import _triton_gemm

    out, _, _ = _triton_gemm.launch(
        qa, qb, sa, sb, SCALE_VECTOR if sa.ndim else SCALE_TENSOR, SCALE_VECTOR if sb.ndim else SCALE_TENSOR,
        bias=bias, activation=None, act_grad=False, aux=None, store_preact=False, amax=None, colsum=False,
        qload_fmt=None, out_dtype=out_dtype)
    return out


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
    return torch._scaled_mm(qa, qb.t(), scale_a=inv_a, scale_b=inv_b, bias=bias, out_dtype=out_dtype,
                            use_fast_accum=FP8_FAST_ACCUM)


# cuBLAS fp8 with fast accumulation: Hopper's fp8 MMA accumulates with fewer bits unless partial sums are promoted.
# Triton's fp8 ``tl.dot`` on sm_90 never promotes (``max_num_imprecise_acc`` 2**30), so lowbit's own GEMM runs the
# same reduced-precision accumulation; with this both backends are one precision class and the faster one wins.
# Their error at K = 5120 against float64 is checked on the GPU (tests/kernels/test_producers.py).
# ``LOWBIT_FP8_FAST_ACCUM=0`` asks cuBLAS for the promoted (slower) accumulation.
FP8_FAST_ACCUM = os.environ.get("LOWBIT_FP8_FAST_ACCUM", "1") == "1"


# (M, K, N, dtypes, scale kinds, bias?, out dtype, device) → "triton" | "cublas", measured once per process.
_FP8_CHOICE: dict[tuple, str] = {}
FP8_BACKEND_ENV = "LOWBIT_FP8_MATMUL"
# "auto" since the bf16 cuBLAS layer tests (tests/functional test_cuda_bf16_layer_cublas_matches_triton,
# tests/kernels test_auto_fp8_backend_measures_once_and_agrees) passed on an H100 (bench/results/h100/
# gpu-tests-fp8.txt); LOWBIT_FP8_MATMUL=triton pins lowbit's own kernel.
DEFAULT_FP8_BACKEND = "auto"


def cublas_fp8_supported(qa, qb, sa, sb, out_dtype) -> bool:
    """Whether the ``auto`` backend may use ``torch._scaled_mm``: a bf16 output (what training under autocast
    produces; a float32 output with a float32 bias disagreed with the reference in an H100 test run, so it stays
    on Triton), inner and output dims multiples of 16, not e5m2 on both sides, and e4m3 on both sides for
    row-wise scales."""
    if not hasattr(torch, "_scaled_mm") or out_dtype != torch.bfloat16 or qa.shape[1] % 16 or qb.shape[0] % 16:
        return False
    if qa.dtype == qb.dtype == torch.float8_e5m2:
        return False
    if sa.ndim == 2 or sb.ndim == 2:
        return qa.dtype == qb.dtype == torch.float8_e4m3fn
    return True


def pick_fastest(candidates: dict[str, Callable[[], object]], time_ms: Callable[[Callable[[], object]], float]) -> str:
    """The name of the candidate with the smallest ``time_ms``; a candidate that raises is never picked."""
    best, best_ms = None, float("inf")
    for name, fn in candidates.items():
        try:
            ms = time_ms(fn)
        except Exception:  # e.g. a cuBLAS layout this torch build rejects
            continue
        if ms < best_ms:
            best, best_ms = name, ms
    if best is None:
        raise RuntimeError(f"no fp8 matmul backend ran ({', '.join(candidates)})")
    return best


def fp8_backend(qa, qb, sa, sb, bias, out_dtype) -> str:
    """The fp8 matmul implementation used by ``backend="auto"`` on CUDA: ``"triton"`` or ``"cublas"``.

    ``LOWBIT_FP8_MATMUL=triton|cublas`` pins it (cuBLAS only where it supports the operands); the default is
    ``DEFAULT_FP8_BACKEND``. With ``auto`` the first call for a shape times both (``triton.testing.do_bench``, a few ms) and caches the faster: on an
    H100 cuBLAS won for tensor-wise scales at every ViT/LLM shape measured and for row-wise scales up to
    K = 3072, Triton for row-wise at K ≥ 5120 (``bench/results/h100/matmul.md``). During CUDA-graph capture
    nothing can be timed: an uncached shape takes cuBLAS for tensor-wise scales, Triton otherwise.
    """
    pinned = os.environ.get(FP8_BACKEND_ENV, DEFAULT_FP8_BACKEND)
    if pinned not in ("auto", "triton", "cublas"):
        raise ValueError(f"{FP8_BACKEND_ENV} must be auto, triton or cublas, got {pinned!r}")
    if not cublas_fp8_supported(qa, qb, sa, sb, out_dtype):
        return "triton"
    if pinned != "auto":
        return pinned
    key = (qa.shape[0], qa.shape[1], qb.shape[0], qa.dtype, qb.dtype, sa.ndim, sb.ndim, bias is not None,
           out_dtype, qa.device)
    choice = _FP8_CHOICE.get(key)
    if choice is None:
        if qa.is_cuda and torch.cuda.is_current_stream_capturing():
            return "cublas" if sa.ndim == sb.ndim == 0 else "triton"
        import triton.testing

        fa, fb = code_format(qa, "scaled_mm"), code_format(qb, "scaled_mm")
        choice = pick_fastest(
            {"triton": lambda: _triton(qa, qb, sa, sb, bias, out_dtype),
             "cublas": lambda: _cublas(qa, qb, sa, sb, fa, fb, bias, out_dtype)},
            lambda fn: triton.testing.do_bench(fn, warmup=3, rep=15),
        )
        _FP8_CHOICE[key] = choice
    return choice
