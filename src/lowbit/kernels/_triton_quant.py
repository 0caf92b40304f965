"""Triton quantization kernels (CUDA; also runnable on CPU tensors under ``TRITON_INTERPRET=1``).

They compute exactly what :mod:`lowbit.kernels._reference` computes, in the same float32 operations:
* ``quantize_rows``: fused row-wise absmax + quantize, one program per block of rows (one read of x when the
  row fits in registers, else two: absmax pass then quantize pass, the second mostly from L2).
* ``quantize_scaled``: quantize with a given per-column or per-tensor multiplier, optionally writing the
  transpose in the same pass (the backward needs ``Wᵀ`` / ``dYᵀ`` laid out K-major for the tensor cores).
* ``dequantize``: codes × broadcast factor → 16/32-bit.

Rounding is done arithmetically (round-half-even via floor, fp8 grid via the float32 exponent bits) and fp8
codes are assembled bit by bit, so results do not depend on the float→fp8 conversion of the backend (the
interpreter's truncates).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from lowbit.kernels._common import (
    FP8_AMAX_FLOOR,
    FP8_MANTISSA_BITS,
    FP8_MAX,
    FP8_MIN_NORMAL_EXP,
    INT8_MAX,
    Format,
    interpreting,
    storage_dtype,
)
from lowbit.kernels._launch import FastLaunch

_FMT_ID = {"int8": 0, "e4m3": 1, "e5m2": 2}
_FP8_BIAS = {"e4m3": 7, "e5m2": 15}


def _fmt_constants(fmt: Format) -> dict:
    """The kernels' format constants (a shared dict: spread it, never change it)."""
    return _fmt_constants_for(fmt, interpreting())


@functools.lru_cache(maxsize=8)
def _fmt_constants_for(fmt: Format, emulate: bool) -> dict:
    if fmt == "int8":
        return dict(FMT=0, QMAX=INT8_MAX, AMAX_FLOOR=0.0, MBITS=0, EMIN=0, BIAS=0, INV_SUB=1.0, EMULATE=emulate)
    mbits, emin = FP8_MANTISSA_BITS[fmt], FP8_MIN_NORMAL_EXP[fmt]
    return dict(
        FMT=_FMT_ID[fmt],
        QMAX=FP8_MAX[fmt],
        AMAX_FLOOR=FP8_AMAX_FLOOR[fmt],
        MBITS=mbits,
        EMIN=emin,
        BIAS=_FP8_BIAS[fmt],
        INV_SUB=2.0 ** (mbits - emin),  # 1 / (spacing of the subnormals)
        EMULATE=emulate,
    )


@triton.jit
def cast_rne(y, dtype: tl.constexpr):
    """Cast float32 to ``dtype`` rounding to nearest even; bf16 is rounded by hand first because the
    interpreter's float32→bf16 cast truncates (on the GPU the pre-rounding is exact and cheap)."""
    if dtype == tl.bfloat16:
        b = y.to(tl.int32, bitcast=True)
        r = ((b + 0x7FFF + ((b >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
        y = tl.where(y == y, r, y)
    return y.to(dtype)


@triton.jit
def _round_half_even(v):
    """rint for |v| ≤ 2**22, exact in float32 (libdevice.rint is not available in the interpreter)."""
    r = tl.floor(v + 0.5)
    tie = (r - v) == 0.5
    odd = (r * 0.5) != tl.floor(r * 0.5)
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def _encode(x, mul, FMT: tl.constexpr, QMAX: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr,
            BIAS: tl.constexpr, INV_SUB: tl.constexpr, EMULATE: tl.constexpr):
    """Codes of float32 ``x`` times ``mul`` as uint8 bit patterns (int8 two's complement, or fp8 bits).

    fp8 uses the hardware's round-to-nearest-even conversion on the GPU and an exact emulation in the
    interpreter (``EMULATE``), whose own conversion truncates; the tests check both against PyTorch's cast.
    """
    y = x * mul
    if FMT == 0:
        y = tl.where(y == y, y, 0.0)
        y = tl.minimum(tl.maximum(y, -QMAX), QMAX)
        if EMULATE:
            y = _round_half_even(y)
        else:
            y = libdevice.rint(y)  # a single cvt.rni on the GPU
        return y.to(tl.int8).to(tl.uint8, bitcast=True)
    if not EMULATE:
        # cvt.rn.satfinite: saturates to ±QMAX and keeps NaN, the clamp below for free (the reference clamps).
        if FMT == 1:
            return y.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
        else:
            return y.to(tl.float8e5).to(tl.uint8, bitcast=True)
    else:
        y = tl.minimum(tl.maximum(y, -QMAX, propagate_nan=tl.PropagateNan.ALL), QMAX,
                       propagate_nan=tl.PropagateNan.ALL)
        # Round to the fp8 grid: spacing 2**(e - MBITS), e = max(exponent(y), EMIN) (subnormals below).
        e = tl.maximum(((y.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, EMIN)
        inv_sp = ((127 - e + MBITS) << 23).to(tl.float32, bitcast=True)
        sp = ((127 + e - MBITS) << 23).to(tl.float32, bitcast=True)
        r = _round_half_even(y * inv_sp) * sp
        # Assemble the fp8 bits of the exactly representable r.
        rb = r.to(tl.int32, bitcast=True)
        ef = ((rb >> 23) & 0xFF) - 127
        normal = (((ef + BIAS) << MBITS) | ((rb & 0x7FFFFF) >> (23 - MBITS)))
        sub = (tl.abs(r) * INV_SUB).to(tl.int32)
        code = tl.where(ef >= EMIN, normal, sub) | tl.where(y.to(tl.int32, bitcast=True) < 0, 128, 0)
        code = tl.where(r == r, code, 0x7F)
        return code.to(tl.uint8)


@triton.jit
def _abs_bits(x):
    """``|x|`` as int32 bit patterns: ordered like the values, with NaN above Inf, so an integer max is a
    NaN-propagating absmax (and can be combined across programs with an integer atomic max)."""
    return tl.abs(x).to(tl.int32, bitcast=True)


@triton.jit
def _scale_and_multiplier(amax, FMT: tl.constexpr, QMAX: tl.constexpr, AMAX_FLOOR: tl.constexpr):
    if FMT == 0:
        scale = amax
        mul = tl.where(amax > 0, tl.div_rn(tl.full(amax.shape, QMAX, tl.float32), amax), 0.0)
    else:
        a = tl.maximum(amax, AMAX_FLOOR, propagate_nan=tl.PropagateNan.ALL)
        scale = tl.div_rn(tl.full(amax.shape, QMAX, tl.float32), a)
        mul = scale
    return scale, mul


@triton.jit
def _load_piece(ptr, base, rmask, OFF: tl.constexpr, P: tl.constexpr, BLOCK_M: tl.constexpr, USED: tl.constexpr):
    """Columns ``[OFF, OFF + P)`` of a row block as stored (16-bit; zero in masked rows), or a 16-wide zero stand-in
    where the piece is absent (``P`` 0) or the input unused, so a prefetched (loop-carried) value has one type."""
    if USED and P > 0:
        offs = base + (OFF + tl.arange(0, P))[None, :]
        return tl.load(ptr + offs, mask=tl.broadcast_to(rmask[:, None], offs.shape), other=0.0)
    else:
        return tl.zeros([BLOCK_M, 16], dtype=ptr.dtype.element_ty)


@triton.jit
def _piece_amax(y, amax_bits):
    """The running row absmax (int32 bits of |y|, see ``_abs_bits``) with a ``[rows, P]`` piece's."""
    return tl.maximum(amax_bits, tl.max(_abs_bits(y), axis=1))


@triton.jit
def _store_codes(q_ptr, y, mul, base, rmask, OFF: tl.constexpr, P: tl.constexpr, FMT: tl.constexpr,
                 QMAX: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr, BIAS: tl.constexpr,
                 INV_SUB: tl.constexpr, EMULATE: tl.constexpr):
    """Store the codes of a ``[rows, P]`` piece at columns ``[OFF, OFF + P)`` of rows ``base`` (row multipliers)."""
    offs = base + (OFF + tl.arange(0, P))[None, :]
    tl.store(q_ptr + offs, _encode(y, mul[:, None], FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB, EMULATE),
             mask=tl.broadcast_to(rmask[:, None], offs.shape))


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_xk,
    FMT: tl.constexpr, QMAX: tl.constexpr, AMAX_FLOOR: tl.constexpr, MBITS: tl.constexpr,
    EMIN: tl.constexpr, BIAS: tl.constexpr, INV_SUB: tl.constexpr, EMULATE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ONE_PASS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    x_rows = x_ptr + rows[:, None].to(tl.int64) * stride_xm
    q_rows = q_ptr + rows[:, None].to(tl.int64) * K
    cols = tl.arange(0, BLOCK_K)
    if ONE_PASS:
        mask = rmask[:, None] & (cols[None, :] < K)
        x = tl.load(x_rows + cols[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
        amax_bits = tl.max(_abs_bits(x), axis=1)
    else:
        amax_bits = tl.zeros([BLOCK_M], dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            mask = rmask[:, None] & ((k0 + cols)[None, :] < K)
            x = tl.load(x_rows + (k0 + cols)[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
            amax_bits = tl.maximum(amax_bits, tl.max(_abs_bits(x), axis=1))
    amax = amax_bits.to(tl.float32, bitcast=True)
    scale, mul = _scale_and_multiplier(amax, FMT, QMAX, AMAX_FLOOR)
    tl.store(s_ptr + rows, scale, mask=rmask)
    if ONE_PASS:
        code = _encode(x, mul[:, None], FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB, EMULATE)
        tl.store(q_rows + cols[None, :], code, mask=mask)
    else:
        for k0 in range(0, K, BLOCK_K):
            mask = rmask[:, None] & ((k0 + cols)[None, :] < K)
            x = tl.load(x_rows + (k0 + cols)[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
            code = _encode(x, mul[:, None], FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB, EMULATE)
            tl.store(q_rows + (k0 + cols)[None, :], code, mask=mask)


@triton.jit
def _absmax_kernel(
    x_ptr, amax_ptr, M, K, stride_xm, stride_xk, PER_COLUMN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ROW_BLOCKS: tl.constexpr,
):
    """Column-wise or tensor-wise absmax as int32 bit patterns, combined across programs by atomic max."""
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.int32)
    for i in range(ROW_BLOCKS):
        rows = (tl.program_id(0) * ROW_BLOCKS + i) * BLOCK_M + tl.arange(0, BLOCK_M)
        mask = (rows[:, None] < M) & (cols[None, :] < K)
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_xm + cols[None, :] * stride_xk, mask=mask,
                    other=0.0).to(tl.float32)
        acc = tl.maximum(acc, _abs_bits(x))
    if PER_COLUMN:
        tl.atomic_max(amax_ptr + cols, tl.max(acc, axis=0), mask=cols < K)
    else:
        tl.atomic_max(amax_ptr, tl.max(tl.max(acc, axis=1), axis=0))


@triton.jit
def _quantize_scaled_kernel(
    x_ptr, q_ptr, amax_ptr, s_ptr, M, K, stride_xm, stride_xk, stride_qm, stride_qk,
    PER_COLUMN: tl.constexpr,
    FMT: tl.constexpr, QMAX: tl.constexpr, AMAX_FLOOR: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr,
    BIAS: tl.constexpr, INV_SUB: tl.constexpr, EMULATE: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_xm + cols[None, :] * stride_xk, mask=mask,
                other=0.0).to(tl.float32)
    if PER_COLUMN:
        amax = tl.load(amax_ptr + cols, mask=cols < K, other=0).to(tl.float32, bitcast=True)
        scale, mul = _scale_and_multiplier(amax, FMT, QMAX, AMAX_FLOOR)
        if tl.program_id(0) == 0:
            tl.store(s_ptr + cols, scale, mask=cols < K)
        mul = mul[None, :]
    else:
        amax = tl.load(amax_ptr).to(tl.float32, bitcast=True)
        scale, mul = _scale_and_multiplier(amax, FMT, QMAX, AMAX_FLOOR)
        if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
            tl.store(s_ptr, scale)
    code = _encode(x, mul, FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB, EMULATE)
    tl.store(q_ptr + rows[:, None].to(tl.int64) * stride_qm + cols[None, :].to(tl.int64) * stride_qk, code,
             mask=mask)


@triton.jit
def _dequantize_kernel(
    q_ptr, f_ptr, out_ptr, M, K, stride_fm, stride_fk, IS_FP8: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    offs = rows[:, None].to(tl.int64) * K + cols[None, :]
    q = tl.load(q_ptr + offs, mask=mask)
    scale = tl.load(f_ptr + rows[:, None] * stride_fm + cols[None, :] * stride_fk, mask=mask, other=1.0)
    if IS_FP8:
        y = tl.div_rn(q.to(tl.float32), scale)
    else:
        y = tl.div_rn(q.to(tl.float32) * scale, tl.full(scale.shape, 127.0, tl.float32))
    tl.store(out_ptr + offs, cast_rne(y, out_ptr.dtype.element_ty), mask=mask)


# Launched through FastLaunch (Triton's front door once per call signature); the names above stay the JIT functions
# (the SASS probes compile them).
_quantize_rows = FastLaunch(_quantize_rows_kernel)
_absmax = FastLaunch(_absmax_kernel)
_quantize_scaled = FastLaunch(_quantize_scaled_kernel)
_dequantize = FastLaunch(_dequantize_kernel)


def _row_blocks(K: int) -> tuple[int, int, bool, int]:
    """(BLOCK_M, BLOCK_K, one pass?, num_warps) for the row kernel."""
    if interpreting():
        bk = min(triton.next_power_of_2(max(K, 1)), 64)
        return 4, bk, bk >= K, 4
    bk = triton.next_power_of_2(max(K, 1))
    if bk <= 2048:
        return max(1, 4096 // bk), bk, True, 8 if bk >= 2048 else 4
    # Wider rows: two 2048-wide passes over 2 rows per program measured fastest on an H100 for 32896×5120
    # (0.208 ms vs 0.249 ms for one 8192-wide pass; bench/results/h100-matmul.md).
    return 2, 2048, False, 8


def quantize_rows(x2d: torch.Tensor, fmt: Format) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise quantization of a 2-D tensor; returns (codes [M, K] contiguous, scale [M, 1] float32)."""
    M, K = x2d.shape
    q = torch.empty((M, K), dtype=storage_dtype(fmt), device=x2d.device)
    scale = torch.empty((M, 1), dtype=torch.float32, device=x2d.device)
    bm, bk, one_pass, warps = _row_blocks(K)
    q_arg = q.view(torch.uint8)
    _quantize_rows[(triton.cdiv(M, bm),)](
        x2d, q_arg, scale, M, K, x2d.stride(0), x2d.stride(1), **_fmt_constants(fmt),
        BLOCK_M=bm, BLOCK_K=bk, ONE_PASS=one_pass, num_warps=warps,
    )
    return q, scale


def quantize_scaled(
    x2d: torch.Tensor, fmt: Format, per_column: bool, transpose: bool, both: bool = False
) -> tuple[torch.Tensor, ...]:
    """Column- or tensor-wise quantization of a 2-D tensor, optionally writing the transpose ``[K, M]``.

    Two launches: the absmax reduction (atomic max of bit patterns) and the quantize pass, which derives the
    scale in-kernel. Returns ``(codes, scale)`` with scale ``[K]`` (per column) or ``[]``; with ``both``
    (tensor-wise only) ``(codes [M, K], codes of xᵀ [K, M], scale)`` from one absmax pass.
    """
    M, K = x2d.shape
    dev = x2d.device
    if both and (per_column or transpose):
        raise ValueError("quantize_scaled: both layouts share one scale only for tensor-wise scaling")
    amax = torch.zeros(K if per_column else 1, dtype=torch.int32, device=dev)
    scale = torch.empty(K if per_column else (), dtype=torch.float32, device=dev)
    shape = (K, M) if transpose else (M, K)
    q = torch.empty(shape, dtype=storage_dtype(fmt), device=dev)
    qt = torch.empty((K, M), dtype=storage_dtype(fmt), device=dev) if both else None
    stride_qm, stride_qk = (1, M) if transpose else (K, 1)
    if interpreting():
        bm, bk, row_blocks = 16, 16, 2
    else:
        # tensor-wise: one 32 × 128 tile per program. On an H100 a 1280 × 5120 weight's absmax took 14.3 µs against
        # 25.2 µs with 8 serial tiles (200 programs for 132 SMs), 32896 × 1280 activations 45 against 61 µs
        # (bench/results/h100/absmax-grid.md; 2 tiles measured the same as 1). Per column (one atomic per column
        # and program, so 8× the atomics at 1 tile) stays at 8 tiles: not measured.
        bm, bk, row_blocks = 32, 128, 8 if per_column else 1
    _absmax[(triton.cdiv(M, bm * row_blocks), triton.cdiv(K, bk))](
        x2d, amax, M, K, x2d.stride(0), x2d.stride(1), PER_COLUMN=per_column, BLOCK_M=bm, BLOCK_K=bk,
        ROW_BLOCKS=row_blocks, num_warps=4,
    )
    block = (16, 16) if interpreting() else (64, 64)
    grid = (triton.cdiv(M, block[0]), triton.cdiv(K, block[1]))
    # ``both``: a second quantize pass from the same absmax writes xᵀ's codes (one absmax pass saved). A single
    # pass storing one fp8 tile in both layouts gave wrong transposed codes on an H100 with Triton 3.6 at some
    # shapes (bench/scripts/debug_dual.py), so each layout has its own, separately tested, store path.
    for out, (sqm, sqk) in [(q, (stride_qm, stride_qk))] + ([(qt, (1, M))] if both else []):
        _quantize_scaled[grid](
            x2d, out.view(torch.uint8), amax, scale, M, K, x2d.stride(0), x2d.stride(1), sqm, sqk,
            PER_COLUMN=per_column, **_fmt_constants(fmt), BLOCK_M=block[0], BLOCK_K=block[1], num_warps=4,
        )
    return (q, qt, scale) if both else (q, scale)


def dequantize(q2d: torch.Tensor, scale2d: torch.Tensor, fmt: Format, dtype: torch.dtype) -> torch.Tensor:
    """Dequantize contiguous 2-D codes with a scale broadcastable to them (``[M,1]``, ``[1,K]`` or ``[1,1]``)."""
    M, K = q2d.shape
    out = torch.empty((M, K), dtype=dtype, device=q2d.device)
    s = scale2d.float().contiguous()
    stride_fm = s.stride(0) if s.shape[0] == M and M > 1 else 0
    stride_fk = s.stride(1) if s.shape[1] == K and K > 1 else 0
    block = (16, 16) if interpreting() else (32, 128)
    _dequantize[(triton.cdiv(M, block[0]), triton.cdiv(K, block[1]))](
        q2d, s, out, M, K, stride_fm, stride_fk, IS_FP8=fmt != "int8", BLOCK_M=block[0], BLOCK_K=block[1],
        num_warps=4,
    )
    return out
