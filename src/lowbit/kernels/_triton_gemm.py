"""One Triton GEMM family for Hopper: int8, fp8 (e4m3/e5m2) and 16-bit operands, with epilogue hooks.

``C[M, N] = epilogue(A @ Bᵀ)`` with ``A [M, K]`` and ``B [N, K]`` both K-major. The kernel is persistent (one
program per SM walks the output tiles in grouped order for L2 reuse) and its tile loop is flattened into the
K loop (``tl.range(..., flatten=True)``), so the software pipeliner issues the next tile's loads while the
current tile's epilogue runs. Operands are loaded through TMA tensor descriptors where the layout allows
(16-byte aligned rows, Hopper or newer) and through pointers otherwise; the interpreter runs both paths.

Epilogue hooks, each a compile-time switch, all in one pass over the accumulator:

* dequantize with per-row (A) / per-column (B) / per-tensor scales, or 1×128 (A) and 128×128 (B) block scales
  applied to each K-block's partial product (DeepSeek-V3's recipe; ``BLOCK_K`` is then 128);
* add a bias; store the pre-activation; apply GELU (erf / tanh) or QuickGELU;
* multiply by the activation's derivative at a stored pre-activation (the backward of fc2's dgrad);
* per-row or per-tensor absmax of what is stored (integer atomic max of the bit patterns: exact and
  order-independent), per-tile column partial sums of what is stored (reduced by the caller, deterministic).

Quantize-on-load (``A_QLOAD``): A is 16-bit and its finished row / tensor scale is given; each tile is turned
into the same int8 / fp8 codes the standalone quantizer writes, in registers, before the MMA.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from lowbit.kernels._common import (
    ACTIVATIONS,
    SCALE_BLOCK,
    SCALE_NONE,
    SCALE_TENSOR,
    SCALE_VECTOR,
    device_capability,
    interpreting,
)
from lowbit.kernels._launch import FastLaunch
from lowbit.kernels._triton_quant import _encode, cast_rne

# Constexpr codes of the activation (0: none) and of the absmax hook.
ACT_CODES = {None: 0, **{name: i + 1 for i, name in enumerate(ACTIVATIONS)}}
AMAX_MODES = {None: 0, "row": 1, "tensor": 2}


def _config(bm, bn, bk, warps, stages, group=8, split=1) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group, "EPI_SPLIT": split},
                         num_warps=warps, num_stages=stages, pre_hook=_set_block_shapes)


def _set_block_shapes(nargs: dict) -> None:
    """Autotune pre-hook: a TMA descriptor's block shape must match the config being tried."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    if nargs.get("USE_TMA"):
        nargs["a_desc"].block_shape = [bm, bk]
        nargs["b_desc"].block_shape = [bn, bk]
    if nargs.get("OUT_TMA"):
        bn_store = bn // nargs["EPI_SPLIT"]
        nargs["c_desc"].block_shape = [bm, bn_store]
        nargs["x_desc"].block_shape = [bm, bn_store]


def configs(block_scaled: bool = False) -> list[triton.Config]:
    """Autotune candidates (one fixed config in the interpreter or with ``LOWBIT_AUTOTUNE=0``)."""
    if interpreting():
        return [_config(16, 16, 128 if block_scaled else 32, 4, 1, group=2, split=2)]
    if block_scaled:
        if os.environ.get("LOWBIT_AUTOTUNE", "1") == "0":
            return [_config(128, 128, 128, 8, 3)]
        return [_config(bm, bn, 128, w, s) for bm, bn, w, s in
                [(128, 128, 8, 3), (128, 128, 4, 4), (128, 256, 8, 3), (256, 128, 8, 3)]]
    if os.environ.get("LOWBIT_AUTOTUNE", "1") == "0":
        return [_config(128, 128, 128, 8, 3)]
    return [_config(bm, bn, bk, w, s, split=sp) for bm, bn, bk, w, s, sp in [
        (128, 256, 128, 8, 3, 1), (128, 256, 128, 8, 3, 2), (256, 128, 128, 8, 3, 1), (128, 128, 128, 8, 4, 1),
        (128, 256, 64, 8, 4, 2), (128, 128, 128, 4, 4, 2), (64, 128, 128, 4, 4, 1),
    ]]


@triton.jit
def _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Grouped ordering (Triton tutorial 03): GROUP_M row-tiles share the B tiles in L2."""
    in_group = GROUP_M * num_pid_n
    first_m = (tile // in_group) * GROUP_M
    size_m = min(num_pid_m - first_m, GROUP_M)
    return first_m + ((tile % in_group) % size_m), (tile % in_group) // size_m


@triton.jit
def _dequant(s, IS_INT: tl.constexpr, IS_FLOAT8: tl.constexpr):
    """Per-scale factor turning a code back into a value: ``absmax / 127`` (int8), ``1 / scale`` (fp8)."""
    if IS_INT:
        return tl.div_rn(s, tl.full(s.shape, 127.0, tl.float32))
    elif IS_FLOAT8:
        return tl.div_rn(tl.full(s.shape, 1.0, tl.float32), s)
    else:
        return s


@triton.jit
def _gelu_tail(x):
    """``Φ(-|x|) = erfc(|x| / √2) / 2`` as ``exp2(p(t) - t² log2 e)``, ``t = min(|x| / √2, 4)``, ``p`` a degree-8
    polynomial fitted to ``log2(erfc(t) / 2) + t² log2 e`` on [0, 4] (Chebyshev least squares; relative error
    below 4e-6 for |x| < 5.6, where float32's ``(1 + erf(x / √2)) / 2`` loses all digits to cancellation). One
    ``ex2`` and nine FMAs: libdevice's ``erff`` selects between two polynomials' coefficients element by element,
    about twice the instructions in the issue-bound producers (``bench/probes/sass_producers.py``)."""
    t = tl.minimum(tl.abs(x) * 0.7071067811865476, 4.0)
    p = -1.0387241218268173e-06
    p = p * t + -5.158052317710826e-06
    p = p * t + 0.00039880574331618845
    p = p * t + -0.004973767325282097
    p = p * t + 0.03354588896036148
    p = p * t + -0.1521928310394287
    p = p * t + 0.5255870819091797
    p = p * t + -1.6280879974365234
    p = p * t + -0.9999958872795105
    return tl.exp2(p - t * t * 1.4426950408889634)


@triton.jit
def _gelu_cdf(x):
    """Φ(x), the standard normal CDF: the tail below zero, one minus it above (no cancellation on either side)."""
    e = _gelu_tail(x)
    return tl.where(x < 0, e, 1.0 - e)


@triton.jit
def _gelu_erf(x):
    return x * _gelu_cdf(x)


@triton.jit
def _tanh(x):
    # tanh via exp, stable for large |x| (libdevice.tanh is not available in the interpreter).
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _activation(x, ACT: tl.constexpr):
    if ACT == 1:
        return _gelu_erf(x)
    elif ACT == 2:
        inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        return 0.5 * x * (1.0 + _tanh(inner))
    elif ACT == 3:
        return x * tl.sigmoid(1.702 * x)
    elif ACT == 9:  # GELU through libdevice's erff: only the producers' benchmark compares against it
        return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    else:
        return x


@triton.jit
def _activation_grad(x, ACT: tl.constexpr):
    """d act / dx, in the forms of PyTorch's ``gelu_backward`` (erf / tanh) and of QuickGELU's autograd."""
    if ACT == 1:
        cdf = _gelu_cdf(x)
        pdf = tl.exp(-0.5 * x * x) * 0.3989422804014327
        return cdf + x * pdf
    elif ACT == 2:
        x_sq = x * x
        t = _tanh(0.7978845608028654 * (x + 0.044715 * x_sq * x))
        left_d = 0.5 * (1.0 + t)
        right_d = 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x_sq)
        return left_d + right_d
    elif ACT == 3:
        s = tl.sigmoid(1.702 * x)
        return s + 1.702 * x * s * (1.0 - s)
    elif ACT == 9:
        return 0.5 * (1.0 + tl.erf(x * 0.7071067811865476)) + x * tl.exp(-0.5 * x * x) * 0.3989422804014327
    else:
        return tl.full(x.shape, 1.0, tl.float32)


@triton.jit
def _gemm(
    a_ptr, b_ptr, a_desc, b_desc, c_desc, x_desc, c_ptr, sa_ptr, sb_ptr, bias_ptr, aux_ptr, amax_ptr, colsum_ptr,
    M, N, K, M_BUCKET,
    stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn, stride_xm, stride_xn,
    stride_sam, stride_sak, stride_sbn, stride_sbk,
    A_SCALE: tl.constexpr, B_SCALE: tl.constexpr, IS_INT: tl.constexpr, IS_FLOAT8: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, ACT_GRAD: tl.constexpr, STORE_PREACT: tl.constexpr,
    AMAX: tl.constexpr, COLSUM: tl.constexpr, USE_TMA: tl.constexpr, OUT_TMA: tl.constexpr, NUM_PROGRAMS: tl.constexpr,
    FLATTEN: tl.constexpr, WARP_SPEC: tl.constexpr, UPCAST_16BIT: tl.constexpr, EMULATE: tl.constexpr,
    A_QLOAD: tl.constexpr, Q_FMT: tl.constexpr, Q_QMAX: tl.constexpr, Q_MBITS: tl.constexpr,
    Q_EMIN: tl.constexpr, Q_BIAS: tl.constexpr, Q_INV_SUB: tl.constexpr, Q_EMULATE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EPI_SPLIT: tl.constexpr, B_BLOCK_ROWS: tl.constexpr = 128,
):
    tl.static_assert(A_SCALE != 3 or BLOCK_K == 128, "block scales need BLOCK_K = 128")
    start = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    rk = tl.arange(0, BLOCK_K)
    # Separate tile counter for the epilogue (Triton's persistent-matmul tutorial does the same), so the
    # pipeliner of the flattened loop may issue the next tile's loads while this tile's epilogue runs.
    tile_c = start - NUM_PROGRAMS
    for tile in tl.range(start, num_tiles, NUM_PROGRAMS, flatten=FLATTEN, warp_specialize=WARP_SPEC):
        pid_m, pid_n = _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        if IS_INT:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_f = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        rm_l = (off_m + tl.arange(0, BLOCK_M)) % M
        rn_l = (off_n + tl.arange(0, BLOCK_N)) % N
        if A_QLOAD:
            if A_SCALE == 2:
                s = tl.load(sa_ptr + rm_l * stride_sam)[:, None]
            else:
                s = tl.load(sa_ptr)
            if Q_FMT == 0:
                qmul = tl.where(s > 0, tl.div_rn(tl.full(s.shape, Q_QMAX, tl.float32), s), 0.0)
            else:
                qmul = s
        for ki in range(k_tiles):
            off_k = ki * BLOCK_K
            if USE_TMA:
                a = a_desc.load([off_m, off_k])
                b = b_desc.load([off_n, off_k])
            else:
                kmask = (off_k + rk) < K
                a = tl.load(a_ptr + rm_l[:, None].to(tl.int64) * stride_am + (off_k + rk)[None, :] * stride_ak,
                            mask=kmask[None, :], other=0.0)
                b = tl.load(b_ptr + rn_l[:, None].to(tl.int64) * stride_bn + (off_k + rk)[None, :] * stride_bk,
                            mask=kmask[None, :], other=0.0)
            if A_QLOAD:
                # Quantize-on-load: the same codes the standalone quantizer writes for this scale.
                bits = _encode(a.to(tl.float32), qmul, Q_FMT, Q_QMAX, Q_MBITS, Q_EMIN, Q_BIAS, Q_INV_SUB,
                               Q_EMULATE)
                if Q_FMT == 0:
                    a = bits.to(tl.int8, bitcast=True)
                elif Q_FMT == 1:
                    a = bits.to(tl.float8e4nv, bitcast=True)
                else:
                    a = bits.to(tl.float8e5, bitcast=True)
            if A_SCALE == 3:
                # Block scales: each K-block's partial product is promoted with its two scales in float32.
                if IS_INT:
                    part = tl.dot(a, b.T, out_dtype=tl.int32).to(tl.float32)
                else:
                    part = tl.dot(a, b.T)
                fa = _dequant(tl.load(sa_ptr + rm_l * stride_sam + ki * stride_sak), IS_INT, IS_FLOAT8)
                fb = _dequant(tl.load(sb_ptr + (rn_l // B_BLOCK_ROWS) * stride_sbn + ki * stride_sbk), IS_INT,
                              IS_FLOAT8)
                acc_f = acc_f + part * fa[:, None] * fb[None, :]
            elif IS_INT:
                acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
            elif UPCAST_16BIT:
                acc = tl.dot(a.to(tl.float32), b.T.to(tl.float32), acc)
            else:
                acc = tl.dot(a, b.T, acc)

        tile_c += NUM_PROGRAMS
        pid_m, pid_n = _tile_coords(tile_c, num_pid_m, num_pid_n, GROUP_M)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        if A_SCALE == 3:
            c = acc_f
        else:
            c = acc.to(tl.float32)
        if EPI_SPLIT == 2:
            # Epilogue subtiling: two BLOCK_N/2 halves keep fewer values live in the elementwise work.
            c0, c1 = tl.split(tl.permute(tl.reshape(c, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
            rn0 = pid_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
            _epilogue(c0, pid_m, rm, rn0, pid_m * BLOCK_M, pid_n * BLOCK_N, c_desc, x_desc, OUT_TMA, M, N, c_ptr, sa_ptr, sb_ptr, bias_ptr, aux_ptr, amax_ptr, colsum_ptr,
                      stride_cm, stride_cn, stride_xm, stride_xn, stride_sam, stride_sbn, A_SCALE, B_SCALE, IS_INT,
                      IS_FLOAT8, HAS_BIAS, ACT, ACT_GRAD, STORE_PREACT, AMAX, COLSUM, EMULATE)
            _epilogue(c1, pid_m, rm, rn0 + BLOCK_N // 2, pid_m * BLOCK_M, pid_n * BLOCK_N + BLOCK_N // 2, c_desc,
                      x_desc, OUT_TMA, M, N, c_ptr, sa_ptr, sb_ptr, bias_ptr, aux_ptr, amax_ptr,
                      colsum_ptr, stride_cm, stride_cn, stride_xm, stride_xn, stride_sam, stride_sbn, A_SCALE,
                      B_SCALE, IS_INT, IS_FLOAT8, HAS_BIAS, ACT, ACT_GRAD, STORE_PREACT, AMAX, COLSUM, EMULATE)
        else:
            rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            _epilogue(c, pid_m, rm, rn, pid_m * BLOCK_M, pid_n * BLOCK_N, c_desc, x_desc, OUT_TMA, M, N, c_ptr, sa_ptr, sb_ptr, bias_ptr, aux_ptr, amax_ptr, colsum_ptr,
                      stride_cm, stride_cn, stride_xm, stride_xn, stride_sam, stride_sbn, A_SCALE, B_SCALE, IS_INT,
                      IS_FLOAT8, HAS_BIAS, ACT, ACT_GRAD, STORE_PREACT, AMAX, COLSUM, EMULATE)


@triton.jit
def _cast(y, dtype: tl.constexpr, EMULATE: tl.constexpr):
    """Round-to-nearest-even cast; by hand only in the interpreter (whose float32 -> bf16 cast truncates)."""
    if EMULATE:
        return cast_rne(y, dtype)
    else:
        return y.to(dtype)


@triton.jit
def _epilogue(c, pid_m, rm, rn, off_m, off_n, c_desc, x_desc, OUT_TMA: tl.constexpr, M, N, c_ptr, sa_ptr, sb_ptr, bias_ptr, aux_ptr, amax_ptr, colsum_ptr,
              stride_cm, stride_cn, stride_xm, stride_xn, stride_sam, stride_sbn,
              A_SCALE: tl.constexpr, B_SCALE: tl.constexpr, IS_INT: tl.constexpr, IS_FLOAT8: tl.constexpr,
              HAS_BIAS: tl.constexpr, ACT: tl.constexpr, ACT_GRAD: tl.constexpr, STORE_PREACT: tl.constexpr,
              AMAX: tl.constexpr, COLSUM: tl.constexpr, EMULATE: tl.constexpr):
    """Dequantize, bias, activation (or its derivative), stores, absmax and column partials of one tile."""
    out_ty = c_ptr.dtype.element_ty
    m_mask = rm < M
    n_mask = rn < N
    mask = m_mask[:, None] & n_mask[None, :]
    if A_SCALE != 3:
        if A_SCALE == 2:
            c = c * _dequant(tl.load(sa_ptr + rm * stride_sam, mask=m_mask, other=1.0), IS_INT, IS_FLOAT8)[:, None]
        elif A_SCALE == 1:
            c = c * _dequant(tl.load(sa_ptr), IS_INT, IS_FLOAT8)
        if B_SCALE == 2:
            c = c * _dequant(tl.load(sb_ptr + rn * stride_sbn, mask=n_mask, other=1.0), IS_INT, IS_FLOAT8)[None, :]
        elif B_SCALE == 1:
            c = c * _dequant(tl.load(sb_ptr), IS_INT, IS_FLOAT8)
    if HAS_BIAS:
        c = c + tl.load(bias_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    # Stores (and the pre-activation load) go through TMA descriptors where the layout allows: a 2-D tensor
    # of 64-bit addresses for a 128×256 tile would take more registers than the accumulator itself.
    if ACT_GRAD:
        # dA = round(dG) * act'(A): rounding dG first makes it the unfused path's number.
        if OUT_TMA:
            pre = x_desc.load([off_m, off_n]).to(tl.float32)
        else:
            pre = tl.load(aux_ptr + rm[:, None].to(tl.int64) * stride_xm + rn[None, :] * stride_xn, mask=mask,
                          other=0.0).to(tl.float32)
        c = _cast(c, out_ty, EMULATE).to(tl.float32) * _activation_grad(pre, ACT)
    else:
        if STORE_PREACT:
            pre16 = _cast(c, aux_ptr.dtype.element_ty, EMULATE)
            if OUT_TMA:
                x_desc.store([off_m, off_n], pre16)
            else:
                tl.store(aux_ptr + rm[:, None].to(tl.int64) * stride_xm + rn[None, :] * stride_xn, pre16, mask=mask)
        if ACT != 0:
            c = _activation(_cast(c, out_ty, EMULATE).to(tl.float32), ACT)
    out = _cast(c, out_ty, EMULATE)
    if OUT_TMA:
        c_desc.store([off_m, off_n], out)
    else:
        tl.store(c_ptr + rm[:, None].to(tl.int64) * stride_cm + rn[None, :] * stride_cn, out, mask=mask)
    if AMAX != 0 or COLSUM:
        stored = tl.where(mask, out.to(tl.float32), 0.0)
        if AMAX == 1:
            tl.atomic_max(amax_ptr + rm, tl.max(tl.abs(stored).to(tl.int32, bitcast=True), axis=1), mask=m_mask)
        elif AMAX == 2:
            tl.atomic_max(amax_ptr, tl.max(tl.max(tl.abs(stored).to(tl.int32, bitcast=True), axis=1), axis=0))
        if COLSUM:
            tl.store(colsum_ptr + pid_m * N + rn, tl.sum(stored, axis=0), mask=n_mask)


_KEY = ["M_BUCKET", "N", "K", "A_SCALE", "B_SCALE", "IS_INT", "IS_FLOAT8", "ACT", "ACT_GRAD", "AMAX", "COLSUM",
        "STORE_PREACT", "HAS_BIAS", "A_QLOAD", "USE_TMA", "OUT_TMA", "FLATTEN", "WARP_SPEC"]
# Column partials are stored, not accumulated: restore them after each autotune trial so a trial of another
# BLOCK_M leaves no stale rows behind.
# FastLaunch: Triton's autotuner and binder once per call signature, then the compiled kernel's launcher alone.
gemm_kernel = FastLaunch(triton.autotune(configs=configs(), key=_KEY, restore_value=["colsum_ptr"])(_gemm))
gemm_kernel_block = FastLaunch(triton.autotune(configs=configs(block_scaled=True), key=_KEY,
                                               restore_value=["colsum_ptr"])(_gemm))


def _num_programs(device: torch.device) -> int:
    """Persistent grid size: the SM count (a few programs in the interpreter, to walk several tiles each)."""
    if device.type != "cuda":
        return 3
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=8)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


_TMA = os.environ.get("LOWBIT_GEMM_TMA", "1") != "0"  # read once: these knobs are set before the process starts
_FLATTEN = os.environ.get("LOWBIT_GEMM_FLATTEN", "1") == "1"
_WARP_SPEC = os.environ.get("LOWBIT_GEMM_WS", "0") == "1"


def tma_ok(t: torch.Tensor) -> bool:
    """TMA needs a Hopper+ GPU, a unit inner stride and 16-byte aligned base and row stride."""
    if not _TMA:
        return False
    if t.is_cuda:
        if device_capability(t.device)[0] < 9:
            return False
    elif not interpreting():
        return False
    es = t.element_size()
    return (t.ndim == 2 and t.stride(1) == 1 and (t.stride(0) * es) % 16 == 0 and t.data_ptr() % 16 == 0
            and t.shape[1] * es >= 16)


def _scale_args(s: torch.Tensor | None, mode: int, like: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    if s is None or mode == SCALE_NONE:
        return like, 0, 0
    if mode == SCALE_TENSOR:
        return s, 0, 0  # the kernel reads one float at the pointer: no reshape (a host-side op) needed
    if mode == SCALE_VECTOR:
        return s, s.stride(0), 0  # [rows, 1] or [rows]: the row stride is the vector's
    return s, s.stride(0), s.stride(1)


def launch(
    a: torch.Tensor, b: torch.Tensor, sa: torch.Tensor | None, sb: torch.Tensor | None, a_mode: int, b_mode: int,
    *, bias: torch.Tensor | None, activation: str | None, act_grad: bool, aux: torch.Tensor | None,
    store_preact: bool, amax: str | None, colsum: bool, qload_fmt: str | None, out_dtype: torch.dtype,
    flatten: bool | None = None, warp_specialize: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Run :func:`gemm_kernel`; arguments are validated by :func:`lowbit.kernels.gemm.gemm`.

    Returns ``(out, amax bits as float32 or None, column sums or None)``; ``aux`` is written in place when
    ``store_preact``.
    """
    from lowbit.kernels._triton_quant import _fmt_constants

    M, K = a.shape
    N = b.shape[0]
    dev = a.device
    c = torch.empty((M, N), dtype=out_dtype, device=dev)
    is_int = b.dtype == torch.int8
    is_f8 = b.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
    use_tma = tma_ok(a) and tma_ok(b)
    x = aux if aux is not None else c
    out_tma = use_tma and tma_ok(c) and tma_ok(x)
    a_desc, b_desc, c_desc, x_desc = a, b, c, x
    if use_tma or out_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        # Block shapes are set per autotune config by the pre-hook.
        if use_tma:
            a_desc = TensorDescriptor.from_tensor(a, [16, 32])
            b_desc = TensorDescriptor.from_tensor(b, [16, 32])
        if out_tma:
            c_desc = TensorDescriptor.from_tensor(c, [16, 16])
            x_desc = TensorDescriptor.from_tensor(x, [16, 16])
    sa_t, s_am, s_ak = _scale_args(sa, a_mode, c)
    sb_t, s_bn, s_bk = _scale_args(sb, b_mode, c)
    amax_buf = None
    if amax is not None:
        amax_buf = torch.zeros(M if amax == "row" else 1, dtype=torch.int32, device=dev)
    nprog = _num_programs(dev)
    colsum_buf = None
    if colsum:
        # One row of partial sums per BLOCK_M tile; the smallest BLOCK_M of any config bounds the rows.
        min_bm = min(cfg.kwargs["BLOCK_M"] for cfg in (gemm_kernel_block if a_mode == SCALE_BLOCK else gemm_kernel).configs)
        colsum_buf = torch.zeros((triton.cdiv(M, min_bm), N), dtype=torch.float32, device=dev)
    if flatten is None:
        flatten = _FLATTEN
    if warp_specialize is None:
        warp_specialize = _WARP_SPEC
    q = _fmt_constants(qload_fmt) if qload_fmt is not None else _fmt_constants("int8")

    def grid(meta: dict) -> tuple[int]:
        return (min(nprog, triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])),)

    kernel = gemm_kernel_block if a_mode == SCALE_BLOCK else gemm_kernel
    kernel[grid](
        a, b, a_desc, b_desc, c_desc, x_desc, c, sa_t, sb_t, bias if bias is not None else c, x,
        amax_buf if amax_buf is not None else c, colsum_buf if colsum_buf is not None else c,
        M, N, K, triton.next_power_of_2(max(M, 1)),
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1), x.stride(0), x.stride(1),
        s_am, s_ak, s_bn, s_bk,
        A_SCALE=a_mode, B_SCALE=b_mode, IS_INT=is_int, IS_FLOAT8=is_f8, HAS_BIAS=bias is not None,
        ACT=ACT_CODES[activation], ACT_GRAD=act_grad, STORE_PREACT=store_preact, AMAX=AMAX_MODES[amax],
        COLSUM=colsum, USE_TMA=use_tma, OUT_TMA=out_tma,
        B_BLOCK_ROWS=1 if (b_mode == SCALE_BLOCK and sb is not None and sb.shape[0] == N and N > 1) else 128,
        # Triton's interpreter multiplies bf16 tiles wrongly (3.9); exact float32 products there instead.
        UPCAST_16BIT=interpreting() and not (is_int or is_f8), EMULATE=interpreting(), NUM_PROGRAMS=nprog, FLATTEN=flatten, WARP_SPEC=warp_specialize,
        A_QLOAD=qload_fmt is not None, Q_FMT=q["FMT"], Q_QMAX=q["QMAX"], Q_MBITS=q["MBITS"], Q_EMIN=q["EMIN"],
        Q_BIAS=q["BIAS"], Q_INV_SUB=q["INV_SUB"], Q_EMULATE=q["EMULATE"],
    )
    amax_out = amax_buf.view(torch.float32) if amax_buf is not None else None
    if amax_out is not None:
        amax_out = amax_out.reshape(M, 1) if amax == "row" else amax_out.reshape(())
    return c, amax_out, (colsum_buf.sum(0) if colsum_buf is not None else None)
