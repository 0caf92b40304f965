"""Triton int8 / fp8 matmul with the dequantize, bias and output cast fused into the epilogue.

``C[M, N] = (A @ Bᵀ) · fa[m] · fb[n] + bias[n]`` where ``A [M, K]`` and ``B [N, K]`` are int8 or fp8 codes,
both K-major (the layout Hopper's 8-bit wgmma needs; a row-major B operand is several times slower), and
``fa``/``fb`` are the per-row / per-tensor dequantization factors derived from the scales in the epilogue
(``absmax / 127`` for int8, ``1 / scale`` for fp8), so no extra kernel runs before or after the matmul.

Grouped program ordering and autotuning follow Triton's matmul tutorial; the autotune key buckets M to the
next power of two so variable token counts do not re-tune on every new shape.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from lowbit.kernels._common import interpreting
from lowbit.kernels.triton_quant import cast_rne


def _configs() -> list[triton.Config]:
    """Hopper-oriented candidates; one fixed config in the interpreter or with ``LOWBIT_AUTOTUNE=0`` (tests)."""
    if interpreting():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2}, num_warps=4, num_stages=1)]
    if os.environ.get("LOWBIT_AUTOTUNE", "1") == "0":
        return [triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4)]
    cfgs = []
    for bm, bn, bk, warps, stages in [
        (128, 256, 128, 8, 3),
        (256, 128, 128, 8, 3),
        (128, 128, 128, 8, 4),
        (128, 128, 128, 4, 4),
        (128, 256, 64, 8, 4),
        (128, 128, 64, 4, 5),
        (64, 128, 128, 4, 4),
        (64, 64, 128, 4, 4),
    ]:
        cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                                  num_warps=warps, num_stages=stages))
    return cfgs


@triton.jit
def _dequant_factor(s, IS_FP8: tl.constexpr):
    if IS_FP8:
        return tl.div_rn(tl.full(s.shape, 1.0, tl.float32), s)
    else:
        return tl.div_rn(s, tl.full(s.shape, 127.0, tl.float32))


@triton.autotune(configs=_configs(), key=["M_BUCKET", "N", "K", "A_ROWWISE", "B_ROWWISE", "HAS_BIAS"])
@triton.jit
def _scaled_mm_kernel(
    a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr,
    M, N, K, M_BUCKET,
    stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
    A_ROWWISE: tl.constexpr, B_ROWWISE: tl.constexpr, IS_FP8: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_in_group = GROUP_M * num_pid_n
    group_id = pid // num_in_group
    first_m = group_id * GROUP_M
    group_size = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % num_in_group) % group_size)
    pid_n = (pid % num_in_group) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_am = tl.max_contiguous(tl.multiple_of(offs_m % M, BLOCK_M), BLOCK_M)
    offs_bn = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_am[:, None].to(tl.int64) * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_bn[None, :].to(tl.int64) * stride_bn

    if IS_FP8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if IS_FP8:
            acc = tl.dot(a, b, acc)
        else:
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    # Epilogue: dequantize with the row / column factors, add the bias, cast to the output dtype.
    m_mask = offs_m < M
    n_mask = offs_n < N
    if A_ROWWISE:
        fa = _dequant_factor(tl.load(sa_ptr + offs_m, mask=m_mask, other=1.0), IS_FP8)[:, None]
    else:
        fa = _dequant_factor(tl.load(sa_ptr), IS_FP8)
    if B_ROWWISE:
        fb = _dequant_factor(tl.load(sb_ptr + offs_n, mask=n_mask, other=1.0), IS_FP8)[None, :]
    else:
        fb = _dequant_factor(tl.load(sb_ptr), IS_FP8)
    c = acc.to(tl.float32) * fa * fb
    if HAS_BIAS:
        c = c + tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, cast_rne(c, c_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def scaled_mm(
    qa: torch.Tensor,
    qb: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Launch the kernel; arguments are validated by :func:`lowbit.kernels.matmul.scaled_mm`."""
    M, K = qa.shape
    N = qb.shape[0]
    c = torch.empty((M, N), dtype=out_dtype, device=qa.device)
    is_fp8 = qa.dtype != torch.int8
    sa = scale_a.float().reshape(-1).contiguous()
    sb = scale_b.float().reshape(-1).contiguous()

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    _scaled_mm_kernel[grid](
        qa, qb, c, sa, sb, bias if bias is not None else sa,
        M, N, K, triton.next_power_of_2(M),
        qa.stride(0), qa.stride(1), qb.stride(0), qb.stride(1), c.stride(0), c.stride(1),
        A_ROWWISE=scale_a.ndim == 2,
        B_ROWWISE=scale_b.ndim == 2,
        IS_FP8=is_fp8, HAS_BIAS=bias is not None,
    )
    return c
