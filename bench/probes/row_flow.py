"""SPEC §10's row-wise data flow on the GPU at ViT-H widths (32896 tokens, 1280 → 5120 → 1280): each piece, then the
LayerNorm → MLP block.

Parts (``--parts``, in this order; ``--budget`` seconds stops before the next item once spent):
* ``copy``: device-to-device copy bandwidth (the memory-bound producers' ceiling).
* ``producers``: LayerNorm / GELU / GELU′ quantizing producers (each launch configuration and the autotuned one)
  against their PyTorch twins (eager and inductor-compiled) and PyTorch's own LayerNorm / GELU / GELU backward; ms and
  the byte-count ideal at the measured copy bandwidth.
* ``gemms``: the block's four plain 8-bit GEMMs (fc1/fc2 forward, fc2/fc1 dgrad; fp8-switchback's and switchback's
  formats): lowbit's Triton GEMM, cuBLAS ``torch._scaled_mm`` with and without fast accumulation, and cuBLAS bf16.
* ``block``: ``lowbit bench mlp``'s LN→MLP block (``lowbit.bench.linear.time_block``) per recipe, eager, CUDA graphs
  and torch.compile, against plain PyTorch bf16 in the same mode; which GEMM backend each fp8 shape took.
* ``profile``: CUDA time per kernel of three fused fp8-switchback block steps and of plain PyTorch's, in each of
  ``--profile-modes`` (eager, compiled).

Usage: ``PYTHONPATH=src python3 bench/probes/row_flow.py --out DIR [--parts ...] [--budget S]`` → ``DIR/row_flow.md``
and ``DIR/row_flow.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from triton.testing import do_bench

M, D, H = 32896, 1280, 5120
ROWS: list[dict] = []
INT8_GEMMS = False  # --int8-gemms: also time switchback's int8 GEMMs (each new shape autotunes 7 Triton configs)
T0 = time.time()


def emit(**row) -> None:
    ROWS.append(row)
    print(json.dumps(row), flush=True)


def ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def part_copy() -> float:
    src = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = ms(lambda: dst.copy_(src))
    gbs = 2 * src.numel() / t / 1e6
    emit(part="copy", what="device-to-device copy 256 MiB", ms=t, GBps=gbs)
    return gbs


def part_producers(gbs: float) -> None:
    from lowbit.kernels import _reference as ref
    from lowbit.kernels import _triton_producers as tp
    from lowbit.kernels import producers as P
    from lowbit.kernels._common import row_pieces

    bf = torch.bfloat16

    def row(what: str, t: float, nbytes: int, **kw) -> None:
        emit(part="producers", what=what, ms=t, ideal_ms=nbytes / gbs / 1e6, GBps=nbytes / t / 1e6, **kw)

    for xdt in (bf, torch.float32):
        x = torch.randn(M, D, device="cuda", dtype=xdt)
        w, b = torch.randn(D, device="cuda", dtype=xdt), torch.randn(D, device="cuda", dtype=xdt)
        nb = M * D * (x.element_size() + 2 + 1) + M * 12
        q, _s, h, _, _ = P.layernorm_quantize(x, w, b, 1e-5, "e4m3", out_dtype=bf)
        ok = torch.equal(q.view(torch.uint8), ref.quantize(h, "e4m3", "row")[0].view(torch.uint8))
        row(f"LN+quantize e4m3 ({xdt} in, bf16 h + codes)", ms(lambda: P.layernorm_quantize(
            x, w, b, 1e-5, "e4m3", out_dtype=bf)), nb, codes_equal=ok)
        row(f"LN+quantize e4m3 ({xdt} in, codes only)", ms(lambda: P.layernorm_quantize(
            x, w, b, 1e-5, "e4m3", out_dtype=bf, want_h=False)), nb - 2 * M * D)
        row(f"twin eager: native LN + row quantize ({xdt})", ms(lambda: P.layernorm_quantize(
            x, w, b, 1e-5, "e4m3", out_dtype=bf, backend="torch")), nb)
        row(f"torch F.layer_norm alone ({xdt}→{xdt})", ms(lambda: torch.nn.functional.layer_norm(x, [D], w, b)),
            M * D * 2 * x.element_size())
    a = torch.randn(M, H, device="cuda", dtype=bf)
    dg = torch.randn(M, H, device="cuda", dtype=bf)
    fwd_b, bwd_b = M * H * 5, M * H * 7
    for cfg in tp._prune(tp.act_candidates(), {"N": H}):
        c = dict(cfg.kwargs, num_warps=cfg.num_warps)
        progs = "one block each" if c["MAX_PROGRAMS"] == tp.ONE_BLOCK_EACH else f"<= {c['MAX_PROGRAMS']} programs"
        width = "+".join(map(str, row_pieces(H))) if c["PIECES"] else f"BLOCK_N={c['BLOCK_N']}"
        tag = f"BLOCK_M={c['BLOCK_M']} {width} warps={c['num_warps']} {progs} stages={c['STAGES']}"
        g, qg, _sg, _ = tp.act_quantize(a, None, "gelu", "e4m3", want_out=True, colsum=False, out_dtype=bf, config=c)
        ok = torch.equal(qg.view(torch.uint8), ref.quantize(g, "e4m3", "row")[0].view(torch.uint8))
        row(f"GELU+quantize e4m3 [{tag}]", ms(lambda c=c: tp.act_quantize(
            a, None, "gelu", "e4m3", want_out=True, colsum=False, out_dtype=bf, config=c)), fwd_b, codes_equal=ok)
        row(f"GELU'+quantize e5m2 +colsum [{tag}]", ms(lambda c=c: tp.act_quantize(
            a, dg, "gelu", "e5m2", want_out=True, colsum=True, out_dtype=bf, config=c)), bwd_b)
    g, qg, _sg = P.act_quantize(a, "gelu", "e4m3")
    ok = torch.equal(qg.view(torch.uint8), ref.quantize(g, "e4m3", "row")[0].view(torch.uint8))
    row("GELU+quantize e4m3 autotuned", ms(lambda: P.act_quantize(a, "gelu", "e4m3")), fwd_b, codes_equal=ok,
        config=str(tp._act_kernel_tuned.best_config))
    row("GELU'+quantize e5m2 +colsum autotuned", ms(lambda: P.act_backward_quantize(dg, a, "gelu", "e5m2",
                                                                                    colsum=True)), bwd_b,
        config=str(tp._act_kernel_tuned.best_config))
    row("GELU+quantize int8 autotuned", ms(lambda: P.act_quantize(a, "gelu", "int8")), fwd_b)
    row("GELU'+quantize int8 +colsum autotuned", ms(lambda: P.act_backward_quantize(dg, a, "gelu", "int8",
                                                                                   colsum=True)), bwd_b)
    for what, fn, nb in [
        ("twin compiled (inductor): GELU+quantize e4m3", lambda t: P.act_quantize(t, "gelu", "e4m3", backend="torch"),
         fwd_b),
        ("twin compiled (inductor): GELU'+quantize e5m2 +colsum",
         lambda t: P.act_backward_quantize(dg, t, "gelu", "e5m2", colsum=True, backend="torch"), bwd_b)]:
        try:
            from torch._inductor.utils import run_and_get_code

            cf = torch.compile(fn)
            _, code = run_and_get_code(cf, a)
            row(what, ms(lambda cf=cf: cf(a)), nb, inductor_code="\n".join(code)[-12000:])
        except Exception as e:
            emit(part="producers", what=what, error=repr(e)[:200])
    row("torch F.gelu alone", ms(lambda: torch.nn.functional.gelu(a)), M * H * 4)
    row("torch gelu_backward alone", ms(lambda: torch.ops.aten.gelu_backward(dg, a)), M * H * 6)
    row("torch sum(0) of [M,H] (a bias gradient alone)", ms(lambda: dg.sum(0, dtype=torch.float32)), M * H * 2)


def part_gemms() -> None:
    from lowbit.kernels import _reference as ref
    from lowbit.kernels import matmul

    bf = torch.bfloat16
    shapes = {"fc1 fwd": (M, D, H), "fc2 fwd": (M, H, D), "fc2 dgrad": (M, D, H), "fc1 dgrad": (M, H, D)}
    for name, (m, k, n) in shapes.items():
        xa = torch.randn(m, k, device="cuda")
        wb = torch.randn(n, k, device="cuda") / k**0.5
        bias = torch.randn(n, device="cuda", dtype=bf) if "fwd" in name else None
        flops = 2 * m * n * k
        a16, b16 = xa.to(bf), wb.to(bf)
        t = ms(lambda: a16 @ b16.t())
        emit(part="gemms", gemm=name, kind="cuBLAS bf16", ms=t, TFLOPs=flops / t / 1e9)
        fa = "e4m3" if "fwd" in name else "e5m2"
        for fmt_a, fmt_b in ((fa, "e4m3"), ("int8", "int8"))[:2 if INT8_GEMMS else 1]:
            qa, sa = ref.quantize(xa, fmt_a, "row")
            qb, sb = ref.quantize(wb, fmt_b, "tensor")
            exact = ref.scaled_mm(qa[:1024], qb, sa[:1024], sb, fmt_a, fmt_b, bias, torch.float64, torch.float64)
            backends = ["triton", "cublas"] if fmt_a != "int8" else ["triton"]
            for be in backends:
                for fast in ((True, False) if be == "cublas" else (None,)):
                    label = f"{fmt_a}x{fmt_b} {be}" + ("" if fast is None else f" fast_accum={fast}")
                    try:
                        matmul.FP8_FAST_ACCUM = bool(fast) if fast is not None else matmul.FP8_FAST_ACCUM
                        out = matmul.scaled_mm(qa, qb, sa, sb, bias=bias, out_dtype=bf, backend=be)
                        err = float((out[:1024].double() - exact).norm() / exact.norm())
                        t = ms(lambda be=be: matmul.scaled_mm(qa, qb, sa, sb, bias=bias, out_dtype=bf, backend=be))
                        emit(part="gemms", gemm=name, kind=label, ms=t, TFLOPs=flops / t / 1e9, rel_err_vs_f64=err)
                    except Exception as e:
                        emit(part="gemms", gemm=name, kind=label, error=repr(e)[:200])
                    finally:
                        matmul.FP8_FAST_ACCUM = True


def part_block(budget: float, kinds: list[str], modes: list[str]) -> None:
    """``KIND@inductor``: the kind compiled with ``LOWBIT_COMPILED_QUANTIZE=inductor`` (the producers' PyTorch twins
    traced into the graph for inductor to fuse, instead of lowbit's Triton producers)."""
    import contextlib

    from lowbit.bench.linear import time_block
    from lowbit.kernels import matmul, ops

    dev = torch.device("cuda")
    for mode in modes:
        base = None
        for kind in kinds:
            if time.time() - T0 > budget:
                emit(part="block", mode=mode, kind=kind, skipped="budget")
                continue
            torch._dynamo.reset()
            t1 = time.time()
            name, _, quant = kind.partition("@")
            ctx = ops.compiled_quantize_mode(quant) if quant else contextlib.nullcontext()
            try:
                with ctx:
                    t, gib = time_block(name, D, D, M, dev, mode=mode, mlp_hidden=H, block="ln-mlp", peak=True)
                base = t if kind == "nn.Linear" else base
                emit(part="block", mode=mode, kind=kind, ms=t, vs_bf16=(base / t) if base else None, peak_GiB=gib,
                     setup_s=round(time.time() - t1, 1))
            except Exception as e:
                emit(part="block", mode=mode, kind=kind, error=repr(e)[:300])
    emit(part="block", what="fp8 GEMM backend per shape (M, K, N, ...)",
         choices={str((*k[:3], str(k[3]), str(k[4]), k[5], k[6])): v for k, v in matmul._FP8_CHOICE.items()})


def part_profile(modes: list[str]) -> None:
    from lowbit.bench.linear import profile_mlp_step

    for mode, kind in [(m, k) for m in modes for k in ("fp8-switchback", "nn.Linear")]:
        torch._dynamo.reset()
        p = profile_mlp_step(kind, "vit-h-14", mode, block="ln-mlp", warmup=3, steps=3)
        table = p.key_averages().table(sort_by="cuda_time_total", row_limit=24, max_name_column_width=90)
        print(f"### profile {kind} {mode} (3 steps)\n{table}", flush=True)
        emit(part="profile", kind=f"{kind} {mode}", table=table)


def write(out: Path | None) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    from lowbit.bench.common import environment

    env = environment(torch.device("cuda"))
    (out / "row_flow.json").write_text(json.dumps({"env": env, "rows": ROWS}, indent=1))
    lines = [f"## bench/probes/row_flow.py\n\n{env}\n"]
    for r in ROWS:
        if r["part"] == "profile":
            lines.append(f"\n### profile {r['kind']}\n```\n{r['table']}\n```\n")
        else:
            lines.append("- " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in r.items() if k != "inductor_code"))
            if "inductor_code" in r:
                lines.append(f"\n  inductor's code (its tail):\n```python\n{r['inductor_code']}\n```\n")
    (out / "row_flow.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--parts", nargs="+", default=["copy", "producers", "gemms", "block", "profile"])
    ap.add_argument("--kinds", nargs="+", default=["nn.Linear", "fp8-switchback", "switchback",
                                                   "fp8-switchback:per-linear"])
    ap.add_argument("--modes", nargs="+", default=["eager", "cudagraphs", "compiled"])
    ap.add_argument("--profile-modes", nargs="+", default=["eager"], choices=["eager", "compiled"])
    ap.add_argument("--budget", type=float, default=250.0)
    ap.add_argument("--int8-gemms", action="store_true")
    args = ap.parse_args()
    global INT8_GEMMS
    INT8_GEMMS = args.int8_gemms
    torch.manual_seed(0)
    gbs = 3.0e3
    import traceback

    for part in args.parts:
        if time.time() - T0 > args.budget:
            emit(part=part, skipped="budget")
            continue
        try:
            if part == "copy":
                gbs = part_copy()
            elif part == "producers":
                part_producers(gbs)
            elif part == "gemms":
                part_gemms()
            elif part == "block":
                part_block(args.budget, args.kinds, args.modes)
            elif part == "profile":
                part_profile(args.profile_modes)
        except Exception as e:
            traceback.print_exc()
            emit(part=part, error=repr(e)[:300])
        write(args.out)
        print(f"[{part} done at {time.time() - T0:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
