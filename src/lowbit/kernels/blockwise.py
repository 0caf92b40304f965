"""Block-scaled quantization and matmul (DeepSeek-V3's fp8 recipe, Jetfire-style int8; SPEC §3, §9).

One scale per **1×128 block** of an activation row (along the matmul's inner dimension K) and one per
**128×128 block** of a weight. A 128-wide output tile of a producer GEMM holds exactly one activation block per
row, so its epilogue can write the codes without waiting for the whole row (the point of block scaling).

Conventions are those of :mod:`lowbit.kernels._reference`, applied per block: int8 ``scale = absmax`` of the block,
``q = round_half_even(x · 127/absmax)``; fp8 ``scale = fmax / max(absmax, floor)``, ``q = fp8(x · scale)``. An
all-zero block gives zero codes and a finite scale (never NaN); a block holding NaN gets a NaN scale. K (and, for
weights, N) need not be multiples of 128: the last block is partial.

Shapes: ``quantize_blockwise(x [M, K], fmt, (1, 128))`` → codes ``[M, K]``, scales float32 ``[M, ceil(K/128)]``;
``(128, 128)`` → scales ``[ceil(M/128), ceil(K/128)]``. :func:`blockwise_mm` is the reference block-scaled matmul
(each K-block's partial product times its two dequantization factors, summed in float32 in block order); the
fast Triton GEMM takes the same arguments.
"""

from __future__ import annotations

import math

import torch

from lowbit.kernels import _reference as reference
from lowbit.kernels._common import (
    Format,
    check_input,
    checks_enabled,
    code_format,
    raise_if_nonfinite,
    storage_dtype,
    use_triton,
)

BLOCK = 128
ACT_BLOCK = (1, BLOCK)
WEIGHT_BLOCK = (BLOCK, BLOCK)

__all__ = ["ACT_BLOCK", "BLOCK", "WEIGHT_BLOCK", "blockwise_mm", "dequantize_blockwise", "expand_scales",
           "quantize_blockwise"]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _check_block(block: tuple[int, int], op: str) -> tuple[int, int]:
    block = tuple(block)  # type: ignore[assignment]
    if block not in (ACT_BLOCK, WEIGHT_BLOCK):
        raise ValueError(f"{op}: block must be (1, {BLOCK}) or ({BLOCK}, {BLOCK}), got {block!r}")
    return block


def expand_scales(scales: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Per-element view of block scales for a ``[M, K]`` tensor (1×128 when ``scales`` has M rows, else 128×128)."""
    return _per_element(scales, *shape)


def _per_element(scales: torch.Tensor, M: int, K: int) -> torch.Tensor:
    """Block scales ``[Mb, Kb]`` gathered to one per element of a ``[M, K]`` tensor (1×128 when ``Mb == M``).

    A gather by ``column // 128``: inductor (torch 2.13, CPU) mis-indexed ``repeat_interleave`` + slice, and a
    gather by ``row // 128`` too, once fused into the quantizer (tests/kernels/test_blockwise.py checks it)."""
    cols = torch.arange(K, device=scales.device) // BLOCK
    if scales.shape[0] == M:
        return scales[:, cols]
    # 128×128: one row of block scales per 128 rows (a few at most: the weight's rows / 128), stacked
    return torch.cat([scales[i : i + 1, cols].expand(min(BLOCK, M - i * BLOCK), K) for i in range(scales.shape[0])])


def _reference(x2d: torch.Tensor, fmt: Format, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    M, K = x2d.shape
    bm = block[0]
    mb, kb = (M if bm == 1 else _cdiv(M, bm)), _cdiv(K, BLOCK)
    a = torch.nn.functional.pad(x2d.float().abs(), (0, kb * BLOCK - K, 0, mb * bm - M))  # zeros: same absmax
    amax = a.reshape(mb, bm, kb, BLOCK).amax(dim=(1, 3)) if a.numel() else a.new_zeros((mb, kb))
    scale = reference.scale_from_absmax(amax, fmt)
    return reference.quantize_with_scale(x2d, _per_element(scale, M, K), fmt).contiguous(), scale


def _quantize_impl(x2d: torch.Tensor, fmt: str, bm: int, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    op = f"quantize_blockwise[{fmt}, {bm}x{BLOCK}]"
    if bm == 1 and x2d.numel() and use_triton(x2d, backend, op):  # type: ignore[arg-type]
        return _triton_quantize_act(x2d, fmt)  # type: ignore[arg-type]
    return _reference(x2d, fmt, (bm, BLOCK))  # type: ignore[arg-type]


@torch.library.custom_op("lowbit::quantize_blockwise", mutates_args=())
def _quantize_op(x: torch.Tensor, fmt: str, bm: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize_impl(x, fmt, bm)


@_quantize_op.register_fake
def _(x: torch.Tensor, fmt: str, bm: int) -> tuple[torch.Tensor, torch.Tensor]:
    M, K = x.shape
    mb = M if bm == 1 else _cdiv(M, BLOCK)
    return x.new_empty((M, K), dtype=storage_dtype(fmt)), x.new_empty((mb, _cdiv(K, BLOCK)), dtype=torch.float32)


def quantize_blockwise(
    x: torch.Tensor,
    fmt: Format,
    block: tuple[int, int] = ACT_BLOCK,
    *,
    check: bool | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-scaled codes of a 2-D ``x`` (1×128 also takes leading dims: rows are the last dim).

    Returns ``(codes like x, float32 scales)``: ``[..., ceil(K/128)]`` for 1×128, ``[ceil(M/128), ceil(K/128)]``
    for 128×128. On CUDA (or under ``TRITON_INTERPRET=1`` with ``backend="triton"``) the 1×128 quantizer is a Triton
    kernel with the same codes and scales; 128×128 (weights, small) always runs the PyTorch reference.
    """
    block = _check_block(block, f"quantize_blockwise[{fmt}]")
    op = f"quantize_blockwise[{fmt}, {block[0]}x{block[1]}]"
    check_input(x, op)
    if fmt not in ("int8", "e4m3", "e5m2"):
        raise ValueError(f"{op}: fmt must be 'int8', 'e4m3' or 'e5m2', got {fmt!r}")
    if block == WEIGHT_BLOCK and x.ndim != 2:
        raise ValueError(f"{op}: 128×128 blocks take a 2-D tensor, got shape {tuple(x.shape)}")
    if checks_enabled(check):
        raise_if_nonfinite(x, op)
    x2d = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # (-1 is ambiguous when the last dim is 0)
    if torch.compiler.is_compiling():  # opaque to inductor (see _per_element), the eager kernel inside
        codes, scale = torch.ops.lowbit.quantize_blockwise(x2d, fmt, block[0])
    else:
        codes, scale = _quantize_impl(x2d, fmt, block[0], backend)
    if block == ACT_BLOCK:
        return codes.reshape(x.shape), scale.reshape(*x.shape[:-1], scale.shape[-1])
    return codes, scale


def dequantize_blockwise(codes: torch.Tensor, scales: torch.Tensor, fmt: Format, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`quantize_blockwise` (2-D codes): ``q · absmax/127`` or ``q / scale`` per block, as dtype."""
    if codes.ndim != 2 or scales.ndim != 2:
        raise ValueError(f"dequantize_blockwise: takes 2-D codes and scales, got {tuple(codes.shape)} and "
                         f"{tuple(scales.shape)}")
    M, K = codes.shape
    mb, kb = scales.shape
    if kb != _cdiv(K, BLOCK) or mb not in (M, _cdiv(M, BLOCK)):
        raise ValueError(f"dequantize_blockwise: scales {tuple(scales.shape)} do not fit codes {tuple(codes.shape)}")
    if torch.compiler.is_compiling():
        return torch.ops.lowbit.dequantize_blockwise(codes, scales, fmt, dtype)
    return _dequantize_op(codes, scales, fmt, dtype)


@torch.library.custom_op("lowbit::dequantize_blockwise", mutates_args=())
def _dequantize_op(codes: torch.Tensor, scales: torch.Tensor, fmt: str, dtype: torch.dtype) -> torch.Tensor:
    M, K = codes.shape
    return reference.dequantize(codes, _per_element(scales, M, K), fmt, dtype).contiguous()  # type: ignore[arg-type]


@_dequantize_op.register_fake
def _(codes: torch.Tensor, scales: torch.Tensor, fmt: str, dtype: torch.dtype) -> torch.Tensor:
    return codes.new_empty(codes.shape, dtype=dtype)


def _row_factors(scales: torch.Tensor, rows: int, fmt: Format, name: str, kb: int) -> torch.Tensor:
    """Dequantization factors ``[rows, Kb]`` from 1×128 (``[rows, Kb]``) or 128×128 (``[ceil(rows/128), Kb]``)."""
    if scales.ndim != 2 or scales.shape[1] != kb or scales.shape[0] not in (rows, _cdiv(rows, BLOCK)):
        raise ValueError(f"blockwise_mm: {name} must have shape [{rows}, {kb}] (1×128 blocks) or "
                         f"[{_cdiv(rows, BLOCK)}, {kb}] (128×128 blocks), got {tuple(scales.shape)}")
    f = reference.dequant_factor(scales.float(), fmt)
    if scales.shape[0] != rows:
        f = f.repeat_interleave(BLOCK, dim=0)[:rows]
    return f


def blockwise_mm(
    qa: torch.Tensor,
    sa: torch.Tensor,
    qb: torch.Tensor,
    sb: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """``Σ_k (qa_k @ qb_kᵀ) · fa_k · fb_kᵀ + bias`` over K-blocks of 128, in float32, cast once to ``out_dtype``.

    ``qa [M, K]`` and ``qb [N, K]`` are codes (int8, or fp8 of either format) laid out inner-dimension-last;
    ``sa``/``sb`` are their block scales from :func:`quantize_blockwise` (1×128 or 128×128 on either side).
    Each block's partial product is exact for int8 (|sum| ≤ 127²·128 < 2²⁴); blocks are added in increasing k.
    """
    fa, fb = code_format(qa, "blockwise_mm"), code_format(qb, "blockwise_mm")
    if (fa == "int8") != (fb == "int8"):
        raise TypeError(f"blockwise_mm: cannot multiply {qa.dtype} by {qb.dtype} codes")
    if qa.ndim != 2 or qb.ndim != 2 or qa.shape[1] != qb.shape[1]:
        raise ValueError(f"blockwise_mm: expected qa [M, K] and qb [N, K], got {tuple(qa.shape)} and {tuple(qb.shape)}")
    kb = _cdiv(qa.shape[1], BLOCK)
    _row_factors(sa, qa.shape[0], fa, "sa", kb)  # shape checks
    _row_factors(sb, qb.shape[0], fb, "sb", kb)
    if torch.compiler.is_compiling():  # opaque to inductor, like the other lowbit ops
        return torch.ops.lowbit.blockwise_mm(qa, sa, qb, sb, bias, out_dtype)
    return _blockwise_mm_op(qa, sa, qb, sb, bias, out_dtype)


@torch.library.custom_op("lowbit::blockwise_mm", mutates_args=())
def _blockwise_mm_op(qa: torch.Tensor, sa: torch.Tensor, qb: torch.Tensor, sb: torch.Tensor,
                     bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    fa, fb = code_format(qa, "blockwise_mm"), code_format(qb, "blockwise_mm")
    M, K = qa.shape
    N = qb.shape[0]
    kb = _cdiv(K, BLOCK)
    fac_a = _row_factors(sa, M, fa, "sa", kb)
    fac_b = _row_factors(sb, N, fb, "sb", kb)
    out = torch.zeros((M, N), dtype=torch.float32, device=qa.device)
    a32, b32 = qa.float(), qb.float()
    for k in range(kb):
        ks = slice(k * BLOCK, min(K, (k + 1) * BLOCK))
        part = a32[:, ks] @ b32[:, ks].t()
        out = out + part * fac_a[:, k : k + 1] * fac_b[:, k].reshape(1, N)
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


@_blockwise_mm_op.register_fake
def _(qa, sa, qb, sb, bias, out_dtype):
    return qa.new_empty((qa.shape[0], qb.shape[0]), dtype=out_dtype)


# ----------------------------------------------------------------------------------------------- Triton (1×128)

def _triton_quantize_act(x2d: torch.Tensor, fmt: Format) -> tuple[torch.Tensor, torch.Tensor]:
    import triton

    from lowbit.kernels import _triton_quant as triton_quant
    from lowbit.kernels._common import interpreting

    M, K = x2d.shape
    kb = _cdiv(K, BLOCK)
    q = torch.empty((M, K), dtype=storage_dtype(fmt), device=x2d.device)
    scale = torch.empty((M, kb), dtype=torch.float32, device=x2d.device)
    bm = 4 if interpreting() else 16
    _kernel()[(triton.cdiv(M, bm), kb)](
        x2d, q.view(torch.uint8), scale, M, K, x2d.stride(0), x2d.stride(1), kb,
        **triton_quant._fmt_constants(fmt), BLOCK_M=bm, BLOCK_K=BLOCK, num_warps=4,
    )
    return q, scale


_KERNEL = None
# Filled in by _kernel() from lowbit.kernels._triton_quant (Triton is imported only when a kernel runs).
tl = _abs_bits = _encode = _scale_and_multiplier = None


def _kernel():
    """The 1×128 quantize kernel, defined on first use (importing Triton only when a kernel runs)."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import triton
    import triton.language as tl

    from lowbit.kernels import _triton_quant as triton_quant

    # @triton.jit resolves names in the module's globals: publish the shared device helpers there.
    globals().update(tl=tl, _abs_bits=triton_quant._abs_bits, _encode=triton_quant._encode,
                     _scale_and_multiplier=triton_quant._scale_and_multiplier)

    @triton.jit
    def _quantize_blocks_kernel(
        x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_xk, KB,
        FMT: tl.constexpr, QMAX: tl.constexpr, AMAX_FLOOR: tl.constexpr, MBITS: tl.constexpr,
        EMIN: tl.constexpr, BIAS: tl.constexpr, INV_SUB: tl.constexpr, EMULATE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """One program: BLOCK_M rows × one 128-wide block; absmax per row of the block, scale, codes."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        rmask = rows < M
        mask = rmask[:, None] & (cols[None, :] < K)
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_xm + cols[None, :] * stride_xk, mask=mask,
                    other=0.0).to(tl.float32)
        amax = tl.max(_abs_bits(x), axis=1).to(tl.float32, bitcast=True)
        scale, mul = _scale_and_multiplier(amax, FMT, QMAX, AMAX_FLOOR)
        tl.store(s_ptr + rows.to(tl.int64) * KB + tl.program_id(1), scale, mask=rmask)
        code = _encode(x, mul[:, None], FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB, EMULATE)
        tl.store(q_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], code, mask=mask)

    from lowbit.kernels._launch import FastLaunch

    _KERNEL = FastLaunch(_quantize_blocks_kernel)
    return _KERNEL
