#!/usr/bin/env python3
"""Where the host's time goes when a converted linear trains: is a compiled user model without CUDA graphs
launch-bound?

Three parts, each printed as it finishes:

1. **Per linear, fwd+bwd**: the host time to issue one training step of one ``nn.Linear(1280, 5120)`` (bias, bf16
   autocast, fp32 weight) per recipe, eager and ``torch.compile``'d, at 64 rows (the GPU work is a few µs, so the
   host bounds it), and eager at ViT-H's 24672 rows too (the GPU time beside it, from CUDA events). The host time is the
   median per-step ``perf_counter`` around the issuing code (no sync inside); the wall per step is the mean over
   the loop ending at a device sync.
2. **Per call**: the host µs of single calls (tiny tensors): lowbit's quantizers and matmuls through the Python
   function and through ``torch.ops.lowbit`` (what a compiled graph calls), cuBLAS' ``_scaled_mm`` and
   ``F.linear``, a ``TensorDescriptor``, and Triton's own floor (an empty kernel with 3 and with 40 arguments);
   each with lowbit's launches replayed (``lowbit.kernels._launch.FastLaunch``) and through Triton's own path.
   Part 1 has each recipe's eager step with the replay off too.
3. **cProfile** of 200 eager switchback steps at 64 rows, by own time.

    PYTHONPATH=src python bench/probes/host_cost.py [--recipes bf16 switchback fp8-switchback fp8-tensorwise]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl

import lowbit
from lowbit.kernels import matmul, ops, quantizers
from lowbit.kernels._launch import set_fast_launch


def linear_step(recipe: str, rows: int, compiled: bool):
    torch.manual_seed(0)
    layer = nn.Linear(1280, 5120).cuda()
    if recipe != "bf16":
        layer = lowbit.convert(layer, recipe, module_filter=lambda fqn, m: True)
    fn = torch.compile(layer) if compiled else layer
    x = torch.randn(rows, 1280, device="cuda", requires_grad=True)
    dy = torch.randn(rows, 5120, device="cuda", dtype=torch.bfloat16)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = fn(x)
        y.backward(dy)

    return step, layer


def time_step(step, n: int) -> tuple[float, float, float]:
    """(host µs median per step, wall µs per step ending at a sync, GPU µs per step from CUDA events)."""
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    host = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    for _ in range(n):
        t = time.perf_counter()
        step()
        host.append(time.perf_counter() - t)
    end.record()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / n
    return statistics.median(host) * 1e6, wall * 1e6, start.elapsed_time(end) / n * 1e3


def per_call_us(fn, n: int = 2000) -> float:
    """Host µs per call, best of 5 batches (launches queue; the GPU work per call is tiny)."""
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
        torch.cuda.synchronize()
    return best


@triton.jit
def _empty3(a, b, n):
    pass


@triton.jit
def _empty40(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11, i12, i13,
             C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, C3: tl.constexpr, C4: tl.constexpr,
             C5: tl.constexpr, C6: tl.constexpr, C7: tl.constexpr, C8: tl.constexpr, C9: tl.constexpr,
             C10: tl.constexpr, C11: tl.constexpr, C12: tl.constexpr, C13: tl.constexpr, C14: tl.constexpr,
             C15: tl.constexpr):
    pass


def part_calls() -> None:
    print("\n## 2. host µs per call (tiny tensors)", flush=True)
    x = torch.randn(64, 1280, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(5120, 1280, device="cuda", dtype=torch.bfloat16)
    qx, sx = quantizers.quantize(x, "int8", "row")
    qw, sw = quantizers.quantize(w, "int8", "tensor")
    fx, fsx = quantizers.quantize(x, "e4m3", "row")
    fw, fsw = quantizers.quantize(w, "e4m3", "tensor")
    ts = [torch.empty(16, device="cuda") for _ in range(10)]
    rows = {
        "F.linear bf16": lambda: F.linear(x, w),
        "torch.empty": lambda: torch.empty((64, 5120), device="cuda", dtype=torch.bfloat16),
        "triton empty kernel, 3 args": lambda: _empty3[(1,)](ts[0], ts[1], 16),
        "triton empty kernel, 24 args + 16 constexpr": lambda: _empty40[(1,)](
            *ts, *range(14), *range(16)),
        "quantize int8 row (python)": lambda: quantizers.quantize(x, "int8", "row"),
        "quantize int8 tensor (python)": lambda: quantizers.quantize(w, "int8", "tensor"),
        "quantize int8 column+transpose (python)": lambda: quantizers.quantize(x, "int8", "column", transpose=True),
        "quantize e4m3 row (python)": lambda: quantizers.quantize(x, "e4m3", "row"),
        "quantize_dual e4m3 (python)": lambda: quantizers.quantize_dual(w, "e4m3"),
        "torch.ops.lowbit.quantize int8 row": lambda: torch.ops.lowbit.quantize(x, "int8", "row", False),
        "scaled_mm int8 triton (python)": lambda: matmul.scaled_mm(qx, qw, sx, sw),
        "torch.ops.lowbit.scaled_mm int8": lambda: torch.ops.lowbit.scaled_mm(qx, qw, sx, sw, None, torch.bfloat16),
        "scaled_mm e4m3 triton": lambda: matmul.scaled_mm(fx, fw, fsx, fsw, backend="triton"),
        "scaled_mm e4m3 cublas": lambda: matmul.scaled_mm(fx, fw, fsx, fsw, backend="cublas"),
        "torch._scaled_mm e4m3 (direct)": lambda: torch._scaled_mm(fx, fw.t(), scale_a=fsx.reciprocal(),
                                                                   scale_b=torch.ones((1, 5120), device="cuda"),
                                                                   out_dtype=torch.bfloat16),
    }
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor

        rows["TensorDescriptor.from_tensor"] = lambda: TensorDescriptor.from_tensor(qx, [16, 32])
    except ImportError:
        pass
    print("| call | µs, FastLaunch replay | µs, Triton's launch path |\n|---|---:|---:|")
    for name, fn in rows.items():
        try:
            fast = per_call_us(fn)
            set_fast_launch(False)
            slow = per_call_us(fn)
            print(f"| {name} | {fast:.1f} | {slow:.1f} |", flush=True)
        except Exception as e:  # a row that fails on this build says so and the rest still run
            print(f"| {name} | failed: {type(e).__name__}: {str(e).splitlines()[0][:120]} | |", flush=True)
        finally:
            set_fast_launch(True)


def part_profile(recipe: str) -> None:
    print(f"\n## 3. cProfile: 200 eager {recipe} steps at 64 rows, by own time", flush=True)
    step, _ = linear_step(recipe, 64, False)
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(200):
        step()
    prof.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
    print(s.getvalue(), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", default=["bf16", "switchback", "fp8-switchback", "fp8-tensorwise"])
    p.add_argument("--profile-recipe", default="switchback")
    args = p.parse_args()
    print(f"# host_cost: {torch.cuda.get_device_name()}, torch {torch.__version__}, Triton {triton.__version__}")
    print("\n## 1. one Linear(1280, 5120) fwd+bwd, bf16 autocast: host µs to issue a step, wall µs, GPU µs")
    print("| recipe | mode | rows | host µs | wall µs | GPU µs |\n|---|---|---:|---:|---:|---:|", flush=True)
    for recipe in args.recipes:
        for compiled in (False, True):
            for rows, n in ((64, 300), (24672, 40)) if not compiled else ((64, 300),):
                step, _ = linear_step(recipe, rows, compiled)
                h, wl, g = time_step(step, n)
                print(f"| {recipe} | {'compiled' if compiled else 'eager'} | {rows} | {h:.0f} | {wl:.0f} | {g:.0f} |",
                      flush=True)
        if recipe != "bf16":  # the same eager step with every launch through Triton's own path
            set_fast_launch(False)
            step, _ = linear_step(recipe, 64, False)
            h, wl, g = time_step(step, 300)
            set_fast_launch(True)
            print(f"| {recipe}, replay off | eager | 64 | {h:.0f} | {wl:.0f} | {g:.0f} |", flush=True)
    print("fp8 matmul choices:", {(*k[:3], str(k[3]), str(k[4]), k[5], k[6]): v
                                   for k, v in matmul._FP8_CHOICE.items()})
    part_calls()
    part_profile(args.profile_recipe)
    print(f"\ncompiled quantize mode: {ops.compiled_quantize()}")


if __name__ == "__main__":
    main()
