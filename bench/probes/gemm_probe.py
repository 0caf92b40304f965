"""GPU probe for lowbit.kernels.gemm (#16): correctness of every hook on the GPU, then TFLOP/s against cuBLAS.

Run on an H100: ``python bench/probes/gemm_probe.py --out $OUT`` (writes gemm-probe.json / .md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from lowbit.kernels import _reference as R
from lowbit.kernels import _triton_gemm as tg
from lowbit.kernels.gemm import gemm, gemm_reference
from lowbit.kernels.matmul import scaled_mm

SHAPES = {"vit-h fc1": (32896, 1280, 5120), "vit-h fc2": (32896, 5120, 1280), "vit-l fc1": (65792, 1024, 4096),
          "vit-l fc2": (65792, 4096, 1024), "8192^3": (8192, 8192, 8192)}


def bq(x, fmt, rows_block):
    """Block quantizer (reference): 1x128 (rows_block False) or 128x128 blocks."""
    M, K = x.shape
    nk = triton.cdiv(K, 128)
    xp = F.pad(x.float(), (0, nk * 128 - K))
    if rows_block:
        nm = triton.cdiv(M, 128)
        xp = F.pad(xp, (0, 0, 0, nm * 128 - M))
        amax = xp.reshape(nm, 128, nk, 128).abs().amax(dim=(1, 3))
        scale = R.scale_from_absmax(amax, fmt)
        full = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[:M, :K]
    else:
        amax = xp.reshape(M, nk, 128).abs().amax(dim=2)
        scale = R.scale_from_absmax(amax, fmt)
        full = scale.repeat_interleave(128, 1)[:, :K]
    return R.quantize_with_scale(x, full, fmt), scale


def check(dev, log):
    torch.manual_seed(0)
    bad = 0
    for (M, N, K) in [(4096, 5120, 1280)]:
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
        pre = torch.randn(M, N, device=dev, dtype=torch.bfloat16)
        cases = []
        for fmt in ("int8", "e4m3"):
            qa, sa = R.quantize(x, fmt, "row")
            qb, sb = R.quantize(w, fmt, "tensor")
            for kw in [dict(activation="gelu_tanh", act_grad_at=pre, colsum=True, amax="row")]:
                cases.append((f"{fmt} {sorted(kw)}", (qa, qb, sa, sb), kw))
        for name, (a, b, sa_, sb_), kw in cases:
            try:
                o = gemm(a, b, sa_, sb_, **kw)
                fa = "int8" if b.dtype == torch.int8 else ("e4m3" if b.dtype == torch.float8_e4m3fn else None)
                aa = a
                if kw.get("quantize_a"):
                    aa = R.quantize_with_scale(a, sa_, fa)
                kw2 = {k: v for k, v in kw.items() if k != "quantize_a"}
                kw2.setdefault("bias", None)
                for k in ("activation", "act_grad_at", "amax"):
                    kw2.setdefault(k, None)
                kw2.setdefault("store_preact", False)
                kw2.setdefault("colsum", False)
                kw2.setdefault("blockwise", False)
                r = gemm_reference(aa, b, sa_, sb_, fa, fa, quantize_a=None, out_dtype=torch.bfloat16,
                                   acc_dtype=torch.float64, **kw2)
                errs = {}
                for n, u, v in zip(o._fields, o, r):
                    if u is None and v is None:
                        continue
                    u, v = u.double(), v.double()
                    errs[n] = ((u - v).norm() / v.norm().clamp_min(1e-30)).item()
                ok = all(e < 2e-2 for e in errs.values()) and all(torch.isfinite(t).all() for t in o if t is not None)
                bad += not ok
                log.append({"check": f"{M}x{N}x{K} {name}", "ok": ok, **{f"rel_{k}": v for k, v in errs.items()}})
            except Exception as e:
                bad += 1
                log.append({"check": f"{M}x{N}x{K} {name}", "ok": False, "error": repr(e)[:300]})
            print(log[-1], flush=True)
    return bad


def spills():
    """Registers / spills of the compiled gemm kernels so far (a spilled epilogue shows up here)."""
    out = set()
    try:
        for cache in tg._gemm.device_caches.values():
            for k in cache[0].values():
                k._init_handles()
                out.add((k.n_regs, k.n_spills))
    except Exception as e:
        return repr(e)[:80]
    return sorted(out)


def bench_shapes(dev, rows, names, variants):
    for sname in names:
        M, K, N = SHAPES[sname]
        flops = 2 * M * N * K
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
        bias = torch.randn(N, device=dev, dtype=torch.bfloat16)
        q8a, s8a = R.quantize(x, "int8", "row")
        q8b, s8b = R.quantize(w, "int8", "tensor")
        qfa, sfa = R.quantize(x, "e4m3", "row")
        qfb, sfb = R.quantize(w, "e4m3", "tensor")
        qfbr, sfbr = R.quantize(w, "e4m3", "row")
        qta, sta = R.quantize(x, "e4m3", "tensor")
        pre = torch.randn(M, N, device=dev, dtype=torch.bfloat16)
        c = {}
        c["bf16 cuBLAS F.linear+bias"] = lambda: F.linear(x, w, bias)
        c["fp8 _scaled_mm rowwise+bias"] = lambda: scaled_mm(qfa, qfbr, sfa, sfbr, bias=bias, backend="cublas")
        c["fp8 _scaled_mm tensorwise+bias"] = lambda: scaled_mm(qta, qfb, sta, sfb, bias=bias, backend="cublas")
        c["int8 old lowbit row/tensor+bias"] = lambda: scaled_mm(q8a, q8b, s8a, s8b, bias=bias, backend="triton")
        c["fp8 old lowbit row/tensor+bias"] = lambda: scaled_mm(qfa, qfb, sfa, sfb, bias=bias, backend="triton")
        if "main" in variants:
            c["int8 gemm row/tensor+bias"] = lambda: gemm(q8a, q8b, s8a, s8b, bias=bias)
            c["fp8 gemm row/tensor+bias"] = lambda: gemm(qfa, qfb, sfa, sfb, bias=bias)
            c["int8 gemm +gelu+preact+amax"] = lambda: gemm(q8a, q8b, s8a, s8b, bias=bias, activation="gelu",
                                                           store_preact=True, amax="row")
            c["fp8 gemm +gelu+preact+amax"] = lambda: gemm(qfa, qfb, sfa, sfb, bias=bias, activation="gelu",
                                                          store_preact=True, amax="row")
            c["bf16 gemm +bias"] = lambda: gemm(x, w, bias=bias)
            c["int8 gemm dgrad act'+colsum+amax"] = lambda: gemm(q8a, q8b, s8a, s8b, activation="gelu",
                                                                act_grad_at=pre, colsum=True, amax="row")
            c["fp8 gemm dgrad act'+colsum+amax"] = lambda: gemm(qfa, qfb, sfa, sfb, activation="gelu",
                                                               act_grad_at=pre, colsum=True, amax="row")
        if "flags" in variants:
            def env_run(var, fn):
                def go():
                    os.environ[var[0]] = var[1]
                    try:
                        return fn()
                    finally:
                        os.environ.pop(var[0])
                return go
            ws = ("LOWBIT_GEMM_WS", "1")
            c["fp8 gemm warp-spec"] = env_run(ws, lambda: gemm(qfa, qfb, sfa, sfb, bias=bias))
            c["int8 gemm warp-spec"] = env_run(ws, lambda: gemm(q8a, q8b, s8a, s8b, bias=bias))
            c["fp8 gemm warp-spec +gelu+preact+amax"] = env_run(ws, lambda: gemm(
                qfa, qfb, sfa, sfb, bias=bias, activation="gelu", store_preact=True, amax="row"))
            c["fp8 gemm warp-spec dgrad act'+colsum+amax"] = env_run(ws, lambda: gemm(
                qfa, qfb, sfa, sfb, activation="gelu", act_grad_at=pre, colsum=True, amax="row"))
        if "hooks" in variants:
            c["fp8 gemm +gelu"] = lambda: gemm(qfa, qfb, sfa, sfb, bias=bias, activation="gelu")
            c["fp8 gemm +preact"] = lambda: gemm(qfa, qfb, sfa, sfb, bias=bias, store_preact=True)
            c["fp8 gemm +amax row"] = lambda: gemm(qfa, qfb, sfa, sfb, bias=bias, amax="row")
            c["fp8 gemm +colsum"] = lambda: gemm(qfa, qfb, sfa, sfb, colsum=True)
            c["fp8 gemm act' only"] = lambda: gemm(qfa, qfb, sfa, sfb, activation="gelu", act_grad_at=pre)
        if "extra" in variants:
            ba, bsa = bq(x, "e4m3", False)
            bb, bsb = bq(w, "e4m3", True)
            ia, isa = bq(x, "int8", False)
            ib, isb = bq(w, "int8", True)
            c["fp8 gemm block+bias"] = lambda: gemm(ba, bb, bsa, bsb, bias=bias, blockwise=True)
            c["int8 gemm block+bias"] = lambda: gemm(ia, ib, isa, isb, bias=bias, blockwise=True)
            c["fp8 gemm qload+bias"] = lambda: gemm(x, qfb, sfa, sfb, bias=bias, quantize_a="e4m3")
            c["int8 gemm qload+bias"] = lambda: gemm(x, q8b, s8a, s8b, bias=bias, quantize_a="int8")
        base = None
        for name, fn in c.items():
            t0 = time.time()
            try:
                fn()
                torch.cuda.synchronize()
                ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
            except Exception as e:
                rows.append({"shape": sname, "kernel": name, "error": repr(e)[:200]})
                print(rows[-1], flush=True)
                traceback.print_exc()
                continue
            tf = flops / ms / 1e9
            base = base or tf
            best = None
            for k in (tg.gemm_kernel, tg.gemm_kernel_block):
                if getattr(k, "best_config", None) is not None and "gemm" in name:
                    best = str(k.best_config)
            rows.append({"shape": sname, "kernel": name, "ms": round(ms, 4), "TFLOP/s": round(tf, 1),
                         "spills": spills(),
                         "vs_bf16": round(tf / base, 3), "tune_s": round(time.time() - t0, 1), "cfg": best})
            print(rows[-1], flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=".")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES))
    p.add_argument("--variants", nargs="+", default=["main", "extra"])
    p.add_argument("--skip-check", action="store_true")
    a = p.parse_args()
    dev = torch.device("cuda")
    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "flatten": os.environ.get("LOWBIT_GEMM_FLATTEN", "1"), "tma": os.environ.get("LOWBIT_GEMM_TMA", "1")}
    print(env, flush=True)
    log, rows = [], []
    bad = 0 if a.skip_check else check(dev, log)
    bench_shapes(dev, rows, a.shapes, a.variants)
    with open(os.path.join(a.out, "gemm-probe.json"), "w") as f:
        json.dump({"env": env, "checks": log, "rows": rows}, f, indent=1)
    with open(os.path.join(a.out, "gemm-probe.md"), "w") as f:
        f.write(f"{env}\n\nchecks failed: {bad} of {len(log)}\n\n| shape | kernel | ms | TFLOP/s | vs bf16 | cfg |\n|---|---|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['shape']} | {r['kernel']} | {r.get('ms')} | {r.get('TFLOP/s')} | {r.get('vs_bf16')} | {(r.get('cfg') or r.get('error', ''))[:60]} |\n")
    with open(os.path.join(a.out, "gemm-probe.md")) as f:
        print(f.read())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
