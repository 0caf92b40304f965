"""The LayerNorm producer (SPEC §10): x → h = LayerNorm(x) (16-bit, only where a wgrad needs it) + the row-wise
int8 / fp8 codes and scales of h for the next GEMM, with the mean and rstd the backward uses. A row (≤ 16384 wide)
fits one program: one read of x, one write of each output.

Two launches, autotuned per width: a masked power-of-two block (the first kernel's), or blocks of rows in
power-of-two pieces (``LN_PIECES``: 1280 = 1024 + 256, no masked lane; the kernel is issue-bound). The codes are
those of the standalone row quantizer applied to h as stored (rounded first), bit for bit, as in
:mod:`lowbit.kernels._triton_producers`.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from lowbit.kernels._common import SMALLEST_PIECE, Format, interpreting, row_pieces, storage_dtype
from lowbit.kernels._launch import FastLaunch
from lowbit.kernels._triton_gemm import _cast
from lowbit.kernels._triton_quant import (
    _abs_bits,
    _encode,
    _fmt_constants,
    _load_piece,
    _piece_amax,
    _scale_and_multiplier,
    _store_codes,
)


@triton.jit
def _ln_piece(x, w_ptr, b_ptr, h_ptr, mean, rstd, hrow, rmask, OFF: tl.constexpr, P: tl.constexpr,
              HAS_W: tl.constexpr, HAS_B: tl.constexpr, WANT_H: tl.constexpr, EMULATE: tl.constexpr):
    """A piece's normalized output, rounded once to h's dtype (stored where wanted), as float32."""
    cols = OFF + tl.arange(0, P)
    y = (x - mean[:, None]) * rstd[:, None]
    if HAS_W:
        y = y * tl.load(w_ptr + cols).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(b_ptr + cols).to(tl.float32)[None, :]
    h = _cast(y, h_ptr.dtype.element_ty, EMULATE)
    offs = hrow + cols[None, :]
    if WANT_H:
        tl.store(h_ptr + offs, h, mask=tl.broadcast_to(rmask[:, None], offs.shape))
    return tl.where(rmask[:, None], h.to(tl.float32), 0.0)


@triton.jit
def _layernorm_quantize_kernel(
    x_ptr, w_ptr, b_ptr, h_ptr, q_ptr, s_ptr, mean_ptr, rstd_ptr, M, D, stride_xm, eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, WANT_H: tl.constexpr,
    FMT: tl.constexpr, QMAX: tl.constexpr, AMAX_FLOOR: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr,
    BIAS: tl.constexpr, INV_SUB: tl.constexpr, EMULATE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    LN_PIECES: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
):
    """A block of rows, each whole in registers: one ``BLOCK_D``-wide block masked past D (``P0`` 0), or D as up to
    three power-of-two pieces ``P0 + P1 + P2`` (1280 = 1024 + 256: no masked lane; the kernel is issue-bound)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    if P0 > 0:
        xrow = rows[:, None].to(tl.int64) * stride_xm
        hrow = rows[:, None].to(tl.int64) * D
        x0 = _load_piece(x_ptr, xrow, rmask, 0, P0, BLOCK_M, True).to(tl.float32)
        x1 = _load_piece(x_ptr, xrow, rmask, P0, P1, BLOCK_M, True).to(tl.float32)
        x2 = _load_piece(x_ptr, xrow, rmask, P0 + P1, P2, BLOCK_M, True).to(tl.float32)
        total = tl.sum(x0, axis=1)
        if P1 > 0:
            total += tl.sum(x1, axis=1)
        if P2 > 0:
            total += tl.sum(x2, axis=1)
        mean = total / D
        c0 = x0 - mean[:, None]
        sq = tl.sum(c0 * c0, axis=1)
        if P1 > 0:
            c1 = x1 - mean[:, None]
            sq += tl.sum(c1 * c1, axis=1)
        if P2 > 0:
            c2 = x2 - mean[:, None]
            sq += tl.sum(c2 * c2, axis=1)
        rstd = 1.0 / tl.sqrt(sq / D + eps)
        h0 = _ln_piece(x0, w_ptr, b_ptr, h_ptr, mean, rstd, hrow, rmask, 0, P0, HAS_W, HAS_B, WANT_H, EMULATE)
        amax_bits = _piece_amax(h0, tl.zeros([BLOCK_M], dtype=tl.int32))
        if P1 > 0:
            h1 = _ln_piece(x1, w_ptr, b_ptr, h_ptr, mean, rstd, hrow, rmask, P0, P1, HAS_W, HAS_B, WANT_H, EMULATE)
            amax_bits = _piece_amax(h1, amax_bits)
        if P2 > 0:
            h2 = _ln_piece(x2, w_ptr, b_ptr, h_ptr, mean, rstd, hrow, rmask, P0 + P1, P2, HAS_W, HAS_B, WANT_H,
                           EMULATE)
            amax_bits = _piece_amax(h2, amax_bits)
        scale, mul = _scale_and_multiplier(amax_bits.to(tl.float32, bitcast=True), FMT, QMAX, AMAX_FLOOR)
        _store_codes(q_ptr, h0, mul, hrow, rmask, 0, P0, FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB, EMULATE)
        if P1 > 0:
            _store_codes(q_ptr, h1, mul, hrow, rmask, P0, P1, FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB, EMULATE)
        if P2 > 0:
            _store_codes(q_ptr, h2, mul, hrow, rmask, P0 + P1, P2, FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB, EMULATE)
    else:
        cols = tl.arange(0, BLOCK_D)
        cmask = cols < D
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_xm + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / D
        xc = tl.where(mask, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / D
        rstd = 1.0 / tl.sqrt(var + eps)
        y = xc * rstd[:, None]
        if HAS_W:
            y = y * tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if HAS_B:
            y = y + tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        h = _cast(y, h_ptr.dtype.element_ty, EMULATE)
        offs = rows[:, None].to(tl.int64) * D + cols[None, :]
        if WANT_H:
            tl.store(h_ptr + offs, h, mask=mask)
        hf = tl.where(mask, h.to(tl.float32), 0.0)
        amax = tl.max(_abs_bits(hf), axis=1).to(tl.float32, bitcast=True)
        scale, mul = _scale_and_multiplier(amax, FMT, QMAX, AMAX_FLOOR)
        tl.store(q_ptr + offs, _encode(hf, mul[:, None], FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB, EMULATE), mask=mask)
    tl.store(s_ptr + rows, scale, mask=rmask)
    tl.store(mean_ptr + rows, mean, mask=rmask)
    tl.store(rstd_ptr + rows, rstd, mask=rmask)


def ln_pieces(D: int) -> tuple[int, int, int]:
    """(P0, P1, P2): D as at most three power-of-two pieces (1280 → 1024 + 256; 1664 → 1024 + 512 + 128), each at
    least 16 lanes (1 under the interpreter), or (0, 0, 0): the masked block."""
    parts = row_pieces(D, smallest=SMALLEST_PIECE, most=3)
    return (*parts, 0, 0)[:3] if parts else (0, 0, 0)


def _ln_piece_size(i: int):
    def size(args: dict) -> int:
        return ln_pieces(args["D"])[i] if args.get("LN_PIECES") else 0
    return size


_LN_HEURISTICS = {"BLOCK_D": lambda args: triton.next_power_of_2(args["D"]), **{f"P{i}": _ln_piece_size(i)
                                                                                   for i in range(3)}}


def _ln_config(bm: int, warps: int, pieces: bool) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "LN_PIECES": pieces}, num_warps=warps)


def ln_candidates() -> list[triton.Config]:
    """The LayerNorm producer's launches: the first kernel's (a masked power-of-two block, about 4096 values a
    program) and blocks of 1-8 rows in pieces: 58 thread-instructions per element at D = 1280 for the former, 26 for
    four rows of 1024 + 256 in four warps (sm_90 SASS, ``bench/probes/sass_producers.py``)."""
    return [_ln_config(1, 4, False), _ln_config(2, 8, False), _ln_config(2, 4, False), _ln_config(4, 4, False),
            _ln_config(2, 4, True), _ln_config(4, 4, True), _ln_config(4, 8, True), _ln_config(8, 8, True)]


def _ln_prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """At most 16384 values a program; pieces where D has them."""
    d = named_args["D"]
    full = triton.next_power_of_2(d)
    has = ln_pieces(d)[0] > 0 and d != full
    keep = [c for c in configs if c.kwargs["BLOCK_M"] * full <= 16384 and (has or not c.kwargs["LN_PIECES"])]
    return keep or configs[:1]


def _ln_configs() -> list[triton.Config]:
    if interpreting():
        return [_ln_config(2, 4, True)]
    if os.environ.get("LOWBIT_AUTOTUNE", "1") == "0":
        return [_ln_config(2, 8, False)]
    return ln_candidates()


_ln_kernel_tuned = FastLaunch(triton.autotune(
    configs=_ln_configs(), key=["D", "HAS_W", "HAS_B", "WANT_H", "FMT"],
    prune_configs_by={"early_config_prune": _ln_prune},
)(triton.heuristics(_LN_HEURISTICS)(_layernorm_quantize_kernel)))
_ln_kernel_fixed = FastLaunch(triton.heuristics(_LN_HEURISTICS)(_layernorm_quantize_kernel))


def layernorm_quantize(
    x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None, eps: float, fmt: Format, *,
    want_h: bool, out_dtype: torch.dtype, config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes [M, D], scale [M, 1], h [M, D] or empty, mean [M, 1], rstd [M, 1])`` (float32 statistics) of a 2-D
    ``x`` with unit inner stride; ``D`` ≤ :data:`lowbit.kernels.producers.LN_MAX_WIDTH`. ``config``
    (``BLOCK_M``, ``LN_PIECES``, ``num_warps``) pins a launch instead of the autotuned one."""
    M, D = x.shape
    dev = x.device
    h = torch.empty((M, D) if want_h else (1,), dtype=out_dtype, device=dev)
    q = torch.empty((M, D), dtype=storage_dtype(fmt), device=dev)
    scale = torch.empty((M, 1), dtype=torch.float32, device=dev)
    mean = torch.empty((M, 1), dtype=torch.float32, device=dev)
    rstd = torch.empty((M, 1), dtype=torch.float32, device=dev)
    args = (x, w if w is not None else x, b if b is not None else x, h, q.view(torch.uint8), scale, mean, rstd, M, D,
            x.stride(0), float(eps))
    meta = dict(HAS_W=w is not None, HAS_B=b is not None, WANT_H=want_h, **_fmt_constants(fmt))
    if config is not None:
        cfg = {"LN_PIECES": False, **config}
        if cfg["LN_PIECES"] and ln_pieces(D)[0] == 0:
            raise ValueError(f"layernorm_quantize: a row of {D} has no power-of-two pieces (config LN_PIECES=True)")
        warps = cfg.pop("num_warps", 4)
        _ln_kernel_fixed[(triton.cdiv(M, cfg["BLOCK_M"]),)](*args, **meta, **cfg, num_warps=warps)
    else:
        _ln_kernel_tuned[lambda m: (triton.cdiv(M, m["BLOCK_M"]),)](*args, **meta)
    return q, scale, h if want_h else h[:0], mean, rstd
