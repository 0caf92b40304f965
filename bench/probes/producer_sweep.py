"""The activation producers' launch space on the GPU: each (warps, programs, ``PREFETCH``, register cap) at one
hidden width, forward (GELU → bf16 + e4m3 codes) and backward (GELU′ → bf16 + e5m2 codes + column sums), against
device copy bandwidth and PyTorch's GELU alone, median of CUDA-event timings (``triton.testing.do_bench``).

The SASS probe (``sass_producers.py``) showed why a row program is latency-bound: ptxas sinks the row's loads
between its GELU computations (four round trips to memory per row where one would do) unless the next row's
inputs are loaded ahead in registers (``PREFETCH``, runs of rows per program).

    PYTHONPATH=src python3 bench/probes/producer_sweep.py --out DIR [--width 5120 --rows 32896]
    PYTHONPATH=src python3 bench/probes/producer_sweep.py --one '{"num_warps": 4, ...}' --backward  # for ncu

→ ``DIR/producer_sweep.md`` and ``.json``; every row also checks its codes against the row quantizer of its output.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from triton.testing import do_bench

ROWS: list[dict] = []


def emit(**row) -> None:
    ROWS.append(row)
    print(json.dumps(row), flush=True)


def ms(fn) -> float:
    return do_bench(fn, warmup=10, rep=60, return_mode="median")


def configs(sms: int, backward: bool) -> list[dict]:
    """The sweep: pieces with runs of rows (prefetch or not) at 2-8 programs per SM, a row block per program
    (forward only: the backward's column sums need runs), 4 or 8 warps, register caps where they could raise the
    programs resident per SM."""
    from lowbit.kernels import _triton_producers as tp

    each = tp.ONE_BLOCK_EACH if not backward else 8 * sms  # the backward's column sums need runs
    pick = dict(BLOCK_M=1, PIECES=True, num_warps=4, MAX_PROGRAMS=each)  # session 12's pick
    out = [dict(pick, libdevice=True), pick,  # the erf's share, then the most likely winners first (a short budget)
           dict(pick, MAX_PROGRAMS=8 * sms, PREFETCH=True), dict(pick, MAX_PROGRAMS=4 * sms, PREFETCH=True),
           dict(pick, num_warps=8, MAX_PROGRAMS=4 * sms, PREFETCH=True),
           dict(pick, MAX_PROGRAMS=8 * sms, PREFETCH=True, libdevice=True)]
    for warps in (4, 8):
        for per_sm in (2, 4, 8):
            for prefetch in (False, True):
                c = dict(BLOCK_M=1, PIECES=True, num_warps=warps, MAX_PROGRAMS=per_sm * sms, PREFETCH=prefetch)
                if c not in out:
                    out.append(c)
        if not backward:
            out.append(dict(BLOCK_M=1, PIECES=True, num_warps=warps, MAX_PROGRAMS=tp.ONE_BLOCK_EACH))
    caps = (128, 96) if backward else (96, 80, 64)
    for cap in caps:
        for per_sm in (4, 8):
            out.append(dict(BLOCK_M=1, PIECES=True, num_warps=4, MAX_PROGRAMS=per_sm * sms, PREFETCH=True,
                            maxnreg=cap))
    if not backward:
        for cap in caps:
            out.append(dict(BLOCK_M=1, PIECES=True, num_warps=4, MAX_PROGRAMS=tp.ONE_BLOCK_EACH, maxnreg=cap))
    out.append(dict(BLOCK_M=2, PIECES=True, num_warps=8, MAX_PROGRAMS=4 * sms, PREFETCH=True))
    return out


def run_one(a, dg, cfg: dict, backward: bool):
    """One pinned launch; ``cfg["libdevice"]``: GELU through libdevice's erff (before the fitted tail)."""
    from lowbit.kernels import _triton_producers as tp

    cfg = dict(cfg)
    act = "gelu-libdevice" if cfg.pop("libdevice", False) else "gelu"
    tp.ACT_CODES.setdefault("gelu-libdevice", tp.LIBDEVICE_GELU)
    if backward:
        return tp.act_quantize(a, dg, act, "e5m2", want_out=True, colsum=True, out_dtype=torch.bfloat16, config=cfg)
    return tp.act_quantize(a, None, act, "e4m3", want_out=True, colsum=False, out_dtype=torch.bfloat16, config=cfg)


def sweep(m: int, n: int, budget: float) -> None:
    from lowbit.kernels import _reference as ref
    from lowbit.kernels import _triton_producers as tp
    from lowbit.kernels import producers as P

    t0 = time.time()
    src = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    gbs = 2 * src.numel() / ms(lambda: dst.copy_(src)) / 1e6
    emit(part="copy", GBps=gbs)
    a = (torch.randn(m, n, device="cuda") * 2).bfloat16()
    dg = torch.randn(m, n, device="cuda").bfloat16()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for backward in (False, True):
        t0 = time.time()  # the budget is per pass
        nbytes = m * n * (7 if backward else 5)
        what = "GELU'+e5m2+colsum" if backward else "GELU+e4m3"
        base = {"pass": what, "M": m, "N": n}
        t = ms(lambda: torch.ops.aten.gelu_backward(dg, a) if backward else torch.nn.functional.gelu(a))
        emit(**base, config="torch gelu alone (no codes)", ms=t, GBps=m * n * (6 if backward else 4) / t / 1e6)
        t = ms(lambda: P.act_backward_quantize(dg, a, "gelu", "e5m2", colsum=True) if backward
               else P.act_quantize(a, "gelu", "e4m3"))
        emit(**base, config="autotuned " + str(tp._act_kernel_tuned.best_config), ms=t, GBps=nbytes / t / 1e6,
             of_copy=nbytes / t / 1e6 / gbs)
        for cfg in configs(sms, backward):
            if time.time() - t0 > budget:
                emit(**base, config=str(cfg), skipped="budget")
                continue
            try:
                out, q, s, cs = run_one(a, dg, cfg, backward)
                q_ref, s_ref = ref.quantize(out, "e5m2" if backward else "e4m3", "row")
                ok = torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8)) and torch.equal(s, s_ref)
                if backward:
                    ok = ok and bool(torch.allclose(cs.double(), out.double().sum(0), rtol=1e-4, atol=1e-2))
                t = ms(lambda cfg=cfg: run_one(a, dg, cfg, backward))
                emit(**base, config=str(cfg), ms=t, GBps=nbytes / t / 1e6, of_copy=nbytes / t / 1e6 / gbs,
                     correct=ok)
            except Exception as e:  # a cap that does not compile, say: the row says so and the sweep goes on
                emit(**base, config=str(cfg), error=repr(e)[:300])


def sweep_layernorm(m: int, d: int) -> None:
    """The LayerNorm producer's candidates (bf16 x, bf16 h + e4m3 codes) at ``m`` x ``d``."""
    from lowbit.kernels import _triton_layernorm as tln

    x = torch.randn(m, d, device="cuda").bfloat16()
    w, b = torch.randn(d, device="cuda").bfloat16(), torch.randn(d, device="cuda").bfloat16()
    nbytes = m * d * 5 + m * 12
    base = {"pass": "LN+e4m3", "M": m, "N": d}

    def run(cfg: dict | None = None):
        return tln.layernorm_quantize(x, w, b, 1e-5, "e4m3", want_h=True, out_dtype=torch.bfloat16, config=cfg)

    t = ms(run)
    emit(**base, config="autotuned " + str(tln._ln_kernel_tuned.best_config), ms=t, GBps=nbytes / t / 1e6)
    for c in tln._ln_prune(tln.ln_candidates(), {"D": d}):
        cfg = dict(c.kwargs, num_warps=c.num_warps)
        t = ms(lambda cfg=cfg: run(cfg))
        emit(**base, config=str(cfg), ms=t, GBps=nbytes / t / 1e6)
    t = ms(lambda: torch.nn.functional.layer_norm(x, [d], w, b))
    emit(**base, config="torch layer_norm alone (no codes)", ms=t, GBps=m * d * 4 / t / 1e6)


def write(out: Path) -> None:
    from lowbit.bench.common import environment

    out.mkdir(parents=True, exist_ok=True)
    (out / "producer_sweep.json").write_text(json.dumps({"env": environment(torch.device("cuda")), "rows": ROWS}, indent=1))
    lines = ["## bench/probes/producer_sweep.py", "", str(environment(torch.device("cuda"))), "",
             "| pass | M x N | config | ms | GB/s | of copy | codes ok |", "|---|---|---|---:|---:|---:|---|"]
    for r in ROWS:
        if r.get("part") == "copy":
            lines.insert(4, f"device-to-device copy: {r['GBps']:.0f} GB/s\n")
            continue
        t = f"{r['ms']:.4f}" if "ms" in r else r.get("error", r.get("skipped", ""))
        lines.append(f"| {r['pass']} | {r['M']} x {r['N']} | {r['config']} | {t} | {r.get('GBps', 0):.0f} | "
                     f"{r.get('of_copy', 0):.2f} | {r.get('correct', '')} |")
    (out / "producer_sweep.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--rows", type=int, default=32896)
    ap.add_argument("--width", type=int, nargs="*", default=[5120])
    ap.add_argument("--budget", type=float, default=120.0, help="seconds of sweeping per pass")
    ap.add_argument("--layernorm", type=int, nargs="*", default=[1280], help="LayerNorm widths (the model width)")
    ap.add_argument("--one", help="run this config (JSON) 5 times and stop (a target for ncu)")
    ap.add_argument("--backward", action="store_true", help="with --one: the backward producer")
    args = ap.parse_args(argv)
    if args.one:
        cfg = json.loads(args.one)
        a = (torch.randn(args.rows, args.width[0], device="cuda") * 2).bfloat16()
        dg = torch.randn_like(a)
        for _ in range(5):
            run_one(a, dg, cfg, args.backward)
        torch.cuda.synchronize()
        return 0
    for n in args.width:
        sweep(args.rows, n, args.budget)
        if args.out:
            write(args.out)
    for d in args.layernorm:
        sweep_layernorm(args.rows, d)
    if args.out:
        write(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
