"""Single-pass quantizing activation producers (SPEC §10): the elementwise passes that exist in a 16-bit MLP anyway,
each also writing the row-wise int8 / fp8 codes and row scales of its output for the next GEMM (the LayerNorm
producer is :mod:`lowbit.kernels._triton_layernorm`).

* ``act_quantize``: a → g = act(a) (16-bit, for fc2's wgrad) + codes_g + scale_g (bias is added in fc1's epilogue).
* ``act_backward_quantize``: dg, a → dA = dg · act'(a) (16-bit, for fc1's wgrad) + codes_dA + scale_dA, and the
  column sums of dA (fc1's bias gradient) as per-program partials (deterministic: each program owns its row).

The activation kernels launch runs of row blocks per program (about 8 programs per SM; ``MAX_PROGRAMS``) or a row
block per program, optionally prefetching the next block (``STAGES`` through shared memory; ``PREFETCH`` into
registers, for pieces: ptxas otherwise sinks a row's loads between its GELU computations, several round trips to
memory per row), and hold a row either in one power-of-two block or as its power-of-two pieces (``PIECES``: 5120 =
4096 + 1024, no masked lane); the autotuner picks per row width. They were issue-bound on libdevice's erf, so masked
lanes cost time (the pieces took ViT-H's 32896 x 5120 from 0.82 to 0.54 ms forward on an H200); with the fitted
GELU of :mod:`lowbit.kernels._triton_gemm` and ``PREFETCH`` the H100 runs them at 93% / 89% of copy bandwidth
(forward 0.305 ms, backward 0.447 ms: ``bench/results/h100/producer-sweep.md``).

The codes are those of the standalone row quantizer (:mod:`lowbit.kernels._reference`) applied to the 16-bit
output as stored, bit for bit: the kernels round the output first and quantize that rounded value with the same
``_encode`` / scale code as ``_triton_quant``. A row wider than one block is done in two passes over column chunks:
the first computes, stores the 16-bit output and the row absmax; the second recomputes the chunk from its inputs
(an L2 hit: the program read them a moment ago) and writes the codes, so device memory still sees one read of
each input and one write of each output.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from lowbit.kernels._common import (
    ACTIVATIONS,
    SMALLEST_PIECE,
    Format,
    interpreting,
    row_pieces,
    storage_dtype,
)
from lowbit.kernels._launch import FastLaunch
from lowbit.kernels._triton_gemm import _activation, _activation_grad, _cast, _num_programs
from lowbit.kernels._triton_quant import (
    _abs_bits,
    _encode,
    _fmt_constants,
    _load_piece,
    _piece_amax,
    _scale_and_multiplier,
    _store_codes,
)

ACT_CODES = {name: i + 1 for i, name in enumerate(ACTIVATIONS)}
LIBDEVICE_GELU = 9  # ACT code of GELU through libdevice's erff (bench/probes/producer_sweep.py compares)


@triton.jit
def _act_values(a, dg, out_ty: tl.constexpr, ACT: tl.constexpr, BACKWARD: tl.constexpr, EMULATE: tl.constexpr):
    """``act(a)`` or ``dg · act'(a)`` of loaded 16-bit values, rounded once to ``out_ty``."""
    af = a.to(tl.float32)
    if BACKWARD:
        y = dg.to(tl.float32) * _activation_grad(af, ACT)
    else:
        y = _activation(af, ACT)
    return _cast(y, out_ty, EMULATE)


@triton.jit
def _act_tile(a_ptr, dg_ptr, offs, mask, out_ty: tl.constexpr, ACT: tl.constexpr, BACKWARD: tl.constexpr,
              EMULATE: tl.constexpr):
    """The 16-bit output of one tile: ``act(a)`` or ``dg · act'(a)``, rounded once to ``out_ty``."""
    a = tl.load(a_ptr + offs, mask=mask, other=0.0)
    dg = a  # unused in the forward
    if BACKWARD:
        dg = tl.load(dg_ptr + offs, mask=mask, other=0.0)
    return _act_values(a, dg, out_ty, ACT, BACKWARD, EMULATE)


@triton.jit
def _load_row(a_ptr, dg_ptr, base, rmask, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, P3: tl.constexpr,
              BLOCK_M: tl.constexpr, USED: tl.constexpr, BACKWARD: tl.constexpr):
    """A row block's pieces of ``a`` and (backward) ``dg``: the eight values a prefetching program carries."""
    DG: tl.constexpr = USED and BACKWARD
    return (_load_piece(a_ptr, base, rmask, 0, P0, BLOCK_M, USED),
            _load_piece(a_ptr, base, rmask, P0, P1, BLOCK_M, USED),
            _load_piece(a_ptr, base, rmask, P0 + P1, P2, BLOCK_M, USED),
            _load_piece(a_ptr, base, rmask, P0 + P1 + P2, P3, BLOCK_M, USED),
            _load_piece(dg_ptr, base, rmask, 0, P0, BLOCK_M, DG),
            _load_piece(dg_ptr, base, rmask, P0, P1, BLOCK_M, DG),
            _load_piece(dg_ptr, base, rmask, P0 + P1, P2, BLOCK_M, DG),
            _load_piece(dg_ptr, base, rmask, P0 + P1 + P2, P3, BLOCK_M, DG))


@triton.jit
def _act_piece(a, dg, out_ptr, base, rmask, OFF: tl.constexpr, P: tl.constexpr, out_ty: tl.constexpr,
               ACT: tl.constexpr, BACKWARD: tl.constexpr, WANT_OUT: tl.constexpr, EMULATE: tl.constexpr):
    """One power-of-two column piece ``[OFF, OFF + P)`` of a row block from its loaded inputs (every activation
    maps 0 to 0 and a masked ``dg`` is 0, so masked rows give 0), its 16-bit output stored; returned as float32
    (holding the 16-bit value instead compiled to the same SASS: ptxas keeps the float32 copy either way)."""
    y = _act_values(a, dg, out_ty, ACT, BACKWARD, EMULATE)
    if WANT_OUT:
        offs = base + (OFF + tl.arange(0, P))[None, :]
        tl.store(out_ptr + offs, y, mask=tl.broadcast_to(rmask[:, None], offs.shape))
    return y.to(tl.float32)


@triton.jit
def _act_quantize_kernel(
    a_ptr, dg_ptr, out_ptr, q_ptr, s_ptr, colsum_ptr, M, N,
    ACT: tl.constexpr, BACKWARD: tl.constexpr, WANT_OUT: tl.constexpr, COLSUM: tl.constexpr,
    FMT: tl.constexpr, QMAX: tl.constexpr, AMAX_FLOOR: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr,
    BIAS: tl.constexpr, INV_SUB: tl.constexpr, EMULATE: tl.constexpr, MAX_PROGRAMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ONE_PASS: tl.constexpr, STAGES: tl.constexpr,
    PIECES: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, P3: tl.constexpr,
    RELOAD: tl.constexpr, PREFETCH: tl.constexpr,
):
    """Program p takes a contiguous run of row blocks (all of them spread over ``min(blocks, MAX_PROGRAMS)``
    programs; one block each where MAX_PROGRAMS is large), so the column sums of a one-pass program accumulate in
    registers and are written once, to the program's own row of ``colsum_ptr``. ``STAGES`` > 1 lets Triton prefetch
    the next row block's inputs while this one is reduced and stored.

    Three ways over a row: ``PIECES`` (the row as up to four power-of-two pieces ``P0 + P1 + P2 + P3 == N``, all in
    registers: no masked lanes, e.g. 5120 = 4096 + 1024), ``ONE_PASS`` (one block ``BLOCK_N ≥ N`` wide, masked past
    N) or two passes over ``BLOCK_N`` column chunks (the second recomputes its chunk, or with ``RELOAD`` reads back
    the 16-bit output the first stored, as inductor's fusion does: an L2 hit instead of a second erf). With pieces,
    ``PREFETCH`` loads the next row block of a run into registers before this one is computed (its loads in flight
    across the row's reduction and stores)."""
    pid = tl.program_id(0)
    out_ty = out_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK_N)
    col_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    if PIECES:
        acc0 = tl.zeros([P0], dtype=tl.float32)
        if P1 > 0:
            acc1 = tl.zeros([P1], dtype=tl.float32)
        if P2 > 0:
            acc2 = tl.zeros([P2], dtype=tl.float32)
        if P3 > 0:
            acc3 = tl.zeros([P3], dtype=tl.float32)
    if COLSUM and not PIECES and not ONE_PASS:  # two passes add each row block's sums to the program's own row
        for n0 in range(0, N, BLOCK_N):  # of partials in memory: it starts at zero (the host allocates it empty)
            tl.store(colsum_ptr + pid * N + n0 + cols, tl.zeros([BLOCK_N], dtype=tl.float32), mask=n0 + cols < N)
        tl.debug_barrier()  # the zeros are visible to every thread of the block before the first addition
    n_blocks = tl.cdiv(M, BLOCK_M)
    per = tl.cdiv(n_blocks, tl.num_programs(0))
    first = pid * per
    last = tl.minimum(first + per, n_blocks)
    # The first row block's inputs (PREFETCH; unused zero stand-ins otherwise).
    row_end = tl.minimum(last * BLOCK_M, M)  # this program's rows end here
    nrows = first * BLOCK_M + tl.arange(0, BLOCK_M)
    nmask = nrows < row_end
    nbase = nrows[:, None].to(tl.int64) * N
    ON: tl.constexpr = PIECES and PREFETCH
    a0n, a1n, a2n, a3n, d0n, d1n, d2n, d3n = _load_row(a_ptr, dg_ptr, nbase, nmask, P0, P1, P2, P3, BLOCK_M, ON,
                                                       BACKWARD)
    for rb in tl.range(first, last, num_stages=STAGES):
        rows = rb * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < M
        base = rows[:, None].to(tl.int64) * N
        if PIECES:
            if PREFETCH:
                a0, a1, a2, a3, d0, d1, d2, d3 = a0n, a1n, a2n, a3n, d0n, d1n, d2n, d3n
                nmask = rows + BLOCK_M < row_end
                nbase = base + BLOCK_M * N
                a0n, a1n, a2n, a3n, d0n, d1n, d2n, d3n = _load_row(a_ptr, dg_ptr, nbase, nmask, P0, P1, P2, P3,
                                                                   BLOCK_M, True, BACKWARD)
            else:
                a0, a1, a2, a3, d0, d1, d2, d3 = _load_row(a_ptr, dg_ptr, base, rmask, P0, P1, P2, P3, BLOCK_M, True,
                                                           BACKWARD)
            y0 = _act_piece(a0, d0, out_ptr, base, rmask, 0, P0, out_ty, ACT, BACKWARD, WANT_OUT, EMULATE)
            amax_bits = _piece_amax(y0, tl.zeros([BLOCK_M], dtype=tl.int32))
            if P1 > 0:
                y1 = _act_piece(a1, d1, out_ptr, base, rmask, P0, P1, out_ty, ACT, BACKWARD, WANT_OUT, EMULATE)
                amax_bits = _piece_amax(y1, amax_bits)
            if P2 > 0:
                y2 = _act_piece(a2, d2, out_ptr, base, rmask, P0 + P1, P2, out_ty, ACT, BACKWARD, WANT_OUT, EMULATE)
                amax_bits = _piece_amax(y2, amax_bits)
            if P3 > 0:
                y3 = _act_piece(a3, d3, out_ptr, base, rmask, P0 + P1 + P2, P3, out_ty, ACT, BACKWARD, WANT_OUT,
                                EMULATE)
                amax_bits = _piece_amax(y3, amax_bits)
            scale, mul = _scale_and_multiplier(amax_bits.to(tl.float32, bitcast=True), FMT, QMAX, AMAX_FLOOR)
            _store_codes(q_ptr, y0, mul, base, rmask, 0, P0, FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB, EMULATE)
            if COLSUM:
                acc0 += tl.sum(y0, axis=0)
            if P1 > 0:
                _store_codes(q_ptr, y1, mul, base, rmask, P0, P1, FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB, EMULATE)
                if COLSUM:
                    acc1 += tl.sum(y1, axis=0)
            if P2 > 0:
                _store_codes(q_ptr, y2, mul, base, rmask, P0 + P1, P2, FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB,
                             EMULATE)
                if COLSUM:
                    acc2 += tl.sum(y2, axis=0)
            if P3 > 0:
                _store_codes(q_ptr, y3, mul, base, rmask, P0 + P1 + P2, P3, FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB,
                             EMULATE)
                if COLSUM:
                    acc3 += tl.sum(y3, axis=0)
        elif ONE_PASS:
            mask = rmask[:, None] & (cols[None, :] < N)
            y = _act_tile(a_ptr, dg_ptr, base + cols[None, :], mask, out_ty, ACT, BACKWARD, EMULATE)
            if WANT_OUT:
                tl.store(out_ptr + base + cols[None, :], y, mask=mask)
            yf = tl.where(mask, y.to(tl.float32), 0.0)
            amax = tl.max(_abs_bits(yf), axis=1).to(tl.float32, bitcast=True)
            scale, mul = _scale_and_multiplier(amax, FMT, QMAX, AMAX_FLOOR)
            tl.store(q_ptr + base + cols[None, :], _encode(yf, mul[:, None], FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB,
                                                           EMULATE), mask=mask)
            if COLSUM:
                col_acc += tl.sum(yf, axis=0)
        else:
            amax_bits = tl.zeros([BLOCK_M], dtype=tl.int32)
            for n0 in range(0, N, BLOCK_N):
                cn = n0 + cols
                mask = rmask[:, None] & (cn[None, :] < N)
                y = _act_tile(a_ptr, dg_ptr, base + cn[None, :], mask, out_ty, ACT, BACKWARD, EMULATE)
                if WANT_OUT:
                    tl.store(out_ptr + base + cn[None, :], y, mask=mask)
                yf = tl.where(mask, y.to(tl.float32), 0.0)
                amax_bits = _piece_amax(yf, amax_bits)
                if COLSUM:  # this program's own partial row: no other program touches it
                    cp = colsum_ptr + pid * N + cn
                    tl.store(cp, tl.load(cp, mask=cn < N, other=0.0) + tl.sum(yf, axis=0), mask=cn < N)
                    tl.debug_barrier()  # the next read of this partial may come from another thread
            scale, mul = _scale_and_multiplier(amax_bits.to(tl.float32, bitcast=True), FMT, QMAX, AMAX_FLOOR)
            if RELOAD:
                tl.debug_barrier()  # the block's stores of the 16-bit output are visible to all its threads
            for n0 in range(0, N, BLOCK_N):
                cn = n0 + cols
                mask = rmask[:, None] & (cn[None, :] < N)
                if RELOAD:
                    yf = tl.load(out_ptr + base + cn[None, :], mask=mask, other=0.0).to(tl.float32)
                else:
                    yf = _act_tile(a_ptr, dg_ptr, base + cn[None, :], mask, out_ty, ACT, BACKWARD,
                                   EMULATE).to(tl.float32)
                tl.store(q_ptr + base + cn[None, :], _encode(yf, mul[:, None], FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB,
                                                             EMULATE), mask=mask)
        tl.store(s_ptr + rows, scale, mask=rmask)
    if PIECES and COLSUM:
        tl.store(colsum_ptr + pid * N + tl.arange(0, P0), acc0)
        if P1 > 0:
            tl.store(colsum_ptr + pid * N + P0 + tl.arange(0, P1), acc1)
        if P2 > 0:
            tl.store(colsum_ptr + pid * N + P0 + P1 + tl.arange(0, P2), acc2)
        if P3 > 0:
            tl.store(colsum_ptr + pid * N + P0 + P1 + P2 + tl.arange(0, P3), acc3)
    elif ONE_PASS and COLSUM:
        tl.store(colsum_ptr + pid * N + cols, col_acc, mask=cols < N)


def _one_pass(args: dict) -> bool:
    return args["BLOCK_N"] >= args["N"]


def _piece(i: int):
    def size(args: dict) -> int:
        if not args.get("PIECES"):
            return 0
        parts = row_pieces(args["N"], smallest=SMALLEST_PIECE)
        assert parts is not None, f"N={args['N']} has no power-of-two pieces: the PIECES config should be pruned"
        return parts[i] if i < len(parts) else 0
    return size


_PIECE_HEURISTICS = {"ONE_PASS": _one_pass, **{f"P{i}": _piece(i) for i in range(4)}}

ONE_BLOCK_EACH = 1 << 30  # MAX_PROGRAMS: one row block per program (the plain grid of the Triton softmax tutorial)


DIVISOR_CHUNK = -1  # BLOCK_N of a RELOAD candidate: the largest power of two ≤ 2048 dividing N, set by _prune


def _act_config(bm: int, bn: int, warps: int, programs: int = ONE_BLOCK_EACH, stages: int = 1,
                reload: bool = False, prefetch: bool = False,
                maxnreg: int | None = None) -> triton.Config:
    """``bn`` 0: the row in power-of-two pieces (``PIECES``, optionally ``prefetch``); else blocks
    ``bn`` wide (one or two passes); ``reload``: two passes whose second reads the stored output back (``bn``
    DIVISOR_CHUNK: chunks that tile N); ``maxnreg``: a register cap per thread (more programs resident per SM)."""
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn or 16, "MAX_PROGRAMS": programs, "STAGES": stages,
                          "PIECES": bn == 0, "RELOAD": reload, "PREFETCH": prefetch},
                         num_warps=warps, maxnreg=maxnreg)


def divisor_chunk(n: int, *, largest: int = 2048, smallest: int = 128) -> int | None:
    """The largest power of two ≤ ``largest`` that divides ``n`` (chunks with no masked lane: 5120 → 1024,
    1664 → 128), or None below ``smallest`` or where one chunk would hold the whole row."""
    c = n & -n  # the lowest set bit: the largest power-of-two divisor
    c = min(c, largest)
    return c if smallest <= c < n else None


def _act_configs() -> list[triton.Config]:
    """A small candidate set (a cold cache compiles each, per autotune key), from the H100 measurements at ViT-H's
    32896 x 5120 (``bench/results/h100/row-flow-probe-2.log``): runs of rows over about 8 programs per SM with no
    prefetch were fastest (GELU'+quantize+column sums 0.78 ms, 1.5 TB/s); a row block per program (32896 programs:
    1.09-1.23 ms) and prefetching runs (``STAGES=2``: 1.09-2.52 ms) were slower. Those one-pass blocks are
    ``next_power_of_2(N)`` wide (8192 lanes for 5120 columns: 37% of the lanes masked, and the kernel issue-bound),
    hence the ``PIECES`` candidates (the row as 4096 + 1024 lanes; 0.54 / 0.55 ms forward / backward on an H200).
    The ``RELOAD`` candidates (two passes over chunks that tile the row, the second reading the stored output
    back: inductor's forward) and the ``PREFETCH`` runs (the next row loaded into registers ahead) were the H100's
    picks with the fitted GELU (``bench/results/h100/producer-sweep.md``): forward 0.305 ms (93% of copy
    bandwidth), backward 0.447 ms (89%), against 0.499 / 0.600 for session 12's launch with libdevice's erf. The
    first entry is the launch of the first kernel (a persistent grid of 4 programs per SM, prefetch 3), kept as the
    floor; two-pass column chunks serve rows wider than 8192."""
    if interpreting():
        return [_act_config(2, 16, 4, 3)]
    if os.environ.get("LOWBIT_AUTOTUNE", "1") == "0":
        return [_act_config(2, 1024, 4)]
    return act_candidates()


def act_candidates() -> list[triton.Config]:
    """Every launch the autotuner chooses from on the GPU (before pruning by row width)."""
    return [_act_config(4, 1024, 8, 512, 3),
            _act_config(1, 8192, 8, 1024), _act_config(1, 8192, 16, 1024),
            _act_config(2, 4096, 8, 1024), _act_config(1, 4096, 8, 1024),
            _act_config(4, 2048, 8, 1024), _act_config(1, 2048, 4, 1024), _act_config(2, 2048, 8, 1024),
            _act_config(8, 1024, 4, 1024), _act_config(2, 1024, 4, 1024), _act_config(16, 512, 4, 1024),
            _act_config(1, 0, 4), _act_config(1, 0, 8), _act_config(1, 0, 4, 1024), _act_config(1, 0, 8, 1024),
            _act_config(2, 0, 8, 1024), _act_config(2, 0, 4, 1024),
            _act_config(1, 0, 4, 512, prefetch=True), _act_config(1, 0, 4, 768, prefetch=True),
            _act_config(1, 0, 4, 1024, prefetch=True), _act_config(1, 0, 8, 512, prefetch=True),
            _act_config(1, 0, 8, 1024, prefetch=True),
            _act_config(1, DIVISOR_CHUNK, 4, reload=True), _act_config(1, DIVISOR_CHUNK, 8, reload=True),
            _act_config(2, DIVISOR_CHUNK, 8, reload=True)]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """One-pass blocks exactly ``next_power_of_2(N)`` wide (one row block per program, or runs of them), at most
    8192 values a block; the two-pass chunks of 1024 and 2048 columns where they are narrower than a row; the
    pieces where N has them (a row of at most 8192 values a block; a power of two, one piece, only to prefetch:
    otherwise it is the one pass); the reloading
    two passes over chunks that tile N where the kernel stores its 16-bit output (it reads it back) and sums no
    columns (their two-pass column sums go through memory: 2.2 ms for the backward at 32896 x 5120 on an H200)."""
    n = named_args["N"]
    full = triton.next_power_of_2(n)
    pieces = n <= 8192 and row_pieces(n, smallest=SMALLEST_PIECE) is not None
    plain = [c for c in configs if not c.kwargs["PIECES"] and not c.kwargs["RELOAD"]]
    keep = [c for c in plain if c.kwargs["BLOCK_N"] == full and c.kwargs["BLOCK_M"] * full <= 8192]
    keep += [c for c in plain if c.kwargs["BLOCK_N"] < n and c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_M"] == 4096]
    keep += [c for c in configs if c.kwargs["PIECES"] and pieces and c.kwargs["BLOCK_M"] * n <= 8192
             and (n != full or c.kwargs["PREFETCH"])]  # a power of two: one piece is the one pass
    chunk = divisor_chunk(n)
    meta = {**named_args, **kwargs}  # the launch's keywords (WANT_OUT, COLSUM) arrive as kwargs
    if chunk is not None and meta.get("WANT_OUT", True) and not meta.get("COLSUM", False):
        for c in configs:  # at most 4096 values a chunk, at least 4 a thread
            if c.kwargs["RELOAD"] and 32 * 4 * c.num_warps <= c.kwargs["BLOCK_M"] * chunk <= 4096:
                keep.append(triton.Config({**c.kwargs, "BLOCK_N": chunk}, num_warps=c.num_warps))
    return keep or plain[-1:]


# FastLaunch: Triton's autotuner, heuristics and binder once per call signature, then the launcher alone.
_act_kernel_tuned = FastLaunch(triton.autotune(
    configs=_act_configs(), key=["N", "ACT", "BACKWARD", "WANT_OUT", "COLSUM", "FMT"],
    prune_configs_by={"early_config_prune": _prune},
)(triton.heuristics(_PIECE_HEURISTICS)(_act_quantize_kernel)))
_act_kernel_fixed = FastLaunch(triton.heuristics(_PIECE_HEURISTICS)(_act_quantize_kernel))


def _colsum_partials(rows: int, n: int, device: torch.device) -> torch.Tensor:
    """The ``[rows, n]`` float32 column-sum partials, uninitialised: every launched program writes its own row
    (the two-pass path zeroes it first) and only the launched programs' rows are summed, so no fill kernel runs
    before each producer (tests fill it with NaN to check that)."""
    return torch.empty((rows, n), dtype=torch.float32, device=device)


def _colsum_programs(t: torch.Tensor) -> int:
    """Programs that write column-sum partials: 8 per SM (the partials are [programs, N] float32, summed after)."""
    if t.device.type != "cuda":
        return 4  # the interpreter tests: 9 rows in blocks of 2 leave the fourth program none
    return 8 * _num_programs(t.device)  # the GEMM's persistent grid: one program per SM


def act_quantize(
    a: torch.Tensor, dg: torch.Tensor | None, activation: str | None, fmt: Format, *, want_out: bool, colsum: bool,
    out_dtype: torch.dtype, config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(out [M, N] or empty, codes [M, N], scale [M, 1], colsum [N] float32 or None)`` of ``act(a)`` (``dg`` None)
    or ``dg · act'(a)``, or of ``a`` itself (``activation`` None: a row quantizer that also sums the columns, for
    dY and its bias gradient); contiguous 2-D inputs. ``config`` (``BLOCK_M``, ``BLOCK_N``, ``num_warps``, optionally
    ``MAX_PROGRAMS``, ``STAGES``) pins a launch configuration instead of the autotuned one (tests: the one-pass and
    the two-pass code, one or several row blocks per program)."""
    M, N = a.shape
    dev = a.device
    out = torch.empty((M, N) if want_out else (1,), dtype=out_dtype, device=dev)
    q = torch.empty((M, N), dtype=storage_dtype(fmt), device=dev)
    scale = torch.empty((M, 1), dtype=torch.float32, device=dev)
    cap = _colsum_programs(a)  # with colsum, at most this many programs (rows of partials)
    partial = _colsum_partials(cap if colsum else 1, N if colsum else 1, dev)
    args = (a, dg if dg is not None else a, out, q.view(torch.uint8), scale, partial, M, N)
    meta = dict(ACT=ACT_CODES[activation] if activation is not None else 0, BACKWARD=dg is not None, WANT_OUT=want_out,
                COLSUM=colsum, **_fmt_constants(fmt))

    launched: list[int] = []  # each launch's program count (the autotuner's trials first, the kernel's launch last)

    def grid(m: dict) -> tuple[int]:
        programs = min(m["MAX_PROGRAMS"], cap) if colsum else m["MAX_PROGRAMS"]
        launched.append(max(1, min(programs, triton.cdiv(M, m["BLOCK_M"]))))
        return (launched[-1],)

    if config is not None:
        cfg = {"MAX_PROGRAMS": ONE_BLOCK_EACH, "STAGES": 1, "PIECES": False, "RELOAD": False, "BLOCK_N": 16,
               "PREFETCH": False, **config}
        if cfg["RELOAD"] and not want_out:
            raise ValueError("act_quantize: RELOAD reads back the 16-bit output; it needs want_out=True")
        if cfg["PIECES"] and row_pieces(N, smallest=SMALLEST_PIECE) is None:
            raise ValueError(f"act_quantize: a row of {N} has no power-of-two pieces (config PIECES=True)")
        warps = cfg.pop("num_warps", 4)
        launch = {"maxnreg": cfg.pop("maxnreg")} if cfg.get("maxnreg") is not None else {}
        cfg.pop("maxnreg", None)
        _act_kernel_fixed[grid(cfg)](*args, **meta, **cfg, num_warps=warps, **launch)
    else:
        _act_kernel_tuned[grid](*args, **meta)
    # Every launched program wrote its own row (a program without rows: zeros); rows past the grid are not read.
    return out, q, scale, (partial[: launched[-1]].sum(0) if colsum else None)
