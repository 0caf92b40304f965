"""GPU micro-benchmark: tensor-wise quantization with a transposed layout, current kernels vs candidates.

Candidates (checked bit-exact against the current kernels before timing):
  tstore  — load the tile coalesced, encode, ``tl.trans`` the uint8 codes, store coalesced into xᵀ
  tx      — ``tl.trans`` the float32 tile, then encode and store coalesced into xᵀ
  dual1   — one pass writing both layouts (x codes + tx-style transposed codes)

    python bench/probes/quant_micro.py
"""
import torch
import triton
import triton.language as tl

from lowbit.kernels import quantize, quantize_dual
from lowbit.kernels._triton_quant import _absmax_kernel, _encode, _fmt_constants, _scale_and_multiplier


@triton.jit
def _q_t_kernel(x_ptr, q_ptr, qt_ptr, amax_ptr, M, K, sxm, sxk,
                FMT: tl.constexpr, QMAX: tl.constexpr, AMAX_FLOOR: tl.constexpr, MBITS: tl.constexpr,
                EMIN: tl.constexpr, BIAS: tl.constexpr, INV_SUB: tl.constexpr, EMULATE: tl.constexpr,
                BM: tl.constexpr, BK: tl.constexpr, MODE: tl.constexpr, WRITE_Q: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BK + tl.arange(0, BK)
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * sxm + cols[None, :] * sxk, mask=mask, other=0.0).to(tl.float32)
    amax = tl.load(amax_ptr).to(tl.float32, bitcast=True)
    _, mul = _scale_and_multiplier(amax, FMT, QMAX, AMAX_FLOOR)
    if WRITE_Q:
        code = _encode(x, mul, FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB, EMULATE)
        tl.store(q_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], code, mask=mask)
    tmask = (cols[:, None] < K) & (rows[None, :] < M)
    toffs = cols[:, None].to(tl.int64) * M + rows[None, :]
    if MODE == 0:  # transpose the uint8 codes
        code = _encode(x, mul, FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB, EMULATE)
        tl.store(qt_ptr + toffs, tl.trans(code), mask=tmask)
    else:  # transpose the float tile, then encode
        xt = tl.trans(x)
        tl.store(qt_ptr + toffs, _encode(xt, mul, FMT, QMAX, MBITS, EMIN, BIAS, INV_SUB, EMULATE), mask=tmask)


def candidate(x, fmt, mode, write_q, bm=64, bk=64, warps=4):
    M, K = x.shape
    amax = torch.zeros(1, dtype=torch.int32, device=x.device)
    _absmax_kernel[(triton.cdiv(M, 256), triton.cdiv(K, 128))](
        x, amax, M, K, x.stride(0), x.stride(1), PER_COLUMN=False, BLOCK_M=32, BLOCK_K=128, ROW_BLOCKS=8,
        num_warps=4)
    q = torch.empty((M, K), dtype=torch.uint8, device=x.device) if write_q else amax
    qt = torch.empty((K, M), dtype=torch.uint8, device=x.device)
    _q_t_kernel[(triton.cdiv(M, bm), triton.cdiv(K, bk))](
        x, q, qt, amax, M, K, x.stride(0), x.stride(1), **_fmt_constants(fmt), BM=bm, BK=bk, MODE=mode,
        WRITE_Q=write_q, num_warps=warps)
    return (q if write_q else None), qt


def main():
    from triton.testing import do_bench

    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    print("| shape | fmt | op | ms | GB/s | exact |")
    print("|---|---|---|---|---|---|")
    for shape in [(5120, 1280), (1280, 5120), (3840, 1280), (32896, 1280), (32896, 5120), (200, 80), (1000, 300)]:
        x = torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 3
        M, K = shape
        for fmt in ("e4m3", "e5m2"):
            u = lambda t: t.view(torch.uint8)  # noqa: E731
            ref_q, _ = quantize(x, fmt, "tensor")
            ref_t, _ = quantize(x, fmt, "tensor", transpose=True)
            rows = []
            rows.append(("current transpose", lambda: quantize(x, fmt, "tensor", transpose=True), 3, True))
            rows.append(("current dual", lambda: quantize_dual(x, fmt), 4, True))
            for mode, name in ((0, "tstore"), (1, "tx")):
                for bm, bk, w in ((64, 64, 4), (128, 64, 4), (64, 128, 4), (128, 128, 8)):
                    _, qt = candidate(x, fmt, mode, False, bm, bk, w)
                    ok = torch.equal(qt, u(ref_t))
                    rows.append((f"{name} T {bm}x{bk}w{w}", lambda m=mode, a=bm, b=bk, c=w: candidate(
                        x, fmt, m, False, a, b, c), 3, ok))
                    q, qt = candidate(x, fmt, mode, True, bm, bk, w)
                    ok = torch.equal(qt, u(ref_t)) and torch.equal(q, u(ref_q))
                    rows.append((f"{name} dual1 {bm}x{bk}w{w}", lambda m=mode, a=bm, b=bk, c=w: candidate(
                        x, fmt, m, True, a, b, c), 4, ok))
            for name, fn, passes, ok in rows:
                ms = do_bench(fn, warmup=20, rep=100)
                gbs = M * K * passes / 1e6 / ms  # bytes: read 2B/elt twice + write 1B per layout (approx.)
                print(f"| {M}x{K} | {fmt} | {name} | {ms:.4f} | {gbs:.0f} | {ok} |", flush=True)


if __name__ == "__main__":
    main()
