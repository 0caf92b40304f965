"""Where the CPU time of an eager ViT-B/32 MLP fwd+bwd goes (cProfile), and the cost of single launches.

    python bench/probes/cprofile_mlp.py switchback fp8-switchback
"""
import cProfile
import pstats
import sys
import time

import torch

from lowbit.bench.linear import mlp_step
from lowbit.kernels import _triton_quant as triton_quant
from lowbit.kernels import quantize
from lowbit.kernels.gemm import gemm


def per_call_us(fn, n=200) -> float:
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6


x = torch.randn(128, 768, device="cuda", dtype=torch.bfloat16)
w = torch.randn(3072, 768, device="cuda", dtype=torch.bfloat16)
qx, sx = quantize(x, "int8", "row")
qw, sw = quantize(w, "int8", "tensor")
print("us/call: quantize_rows kernel", per_call_us(lambda: triton_quant.quantize_rows(x, "int8")))
print("us/call: quantize(row) public", per_call_us(lambda: quantize(x, "int8", "row")))
print("us/call: quantize(tensor) public", per_call_us(lambda: quantize(w, "int8", "tensor")))
print("us/call: triton scaled_mm", per_call_us(lambda: gemm(qx, qw, sx, sw, out_dtype=torch.bfloat16)))
print("us/call: torch.empty", per_call_us(lambda: torch.empty(128, 768, device="cuda")))
print("us/call: F.linear", per_call_us(lambda: torch.nn.functional.linear(x, w)))

for kind in sys.argv[1:] or ["switchback"]:
    one = mlp_step(kind, "vit-b-32")
    print(kind, "ms per MLP step (eager):", per_call_us(one, 30) / 1e3, flush=True)
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(20):
        one()
    torch.cuda.synchronize()
    pr.disable()
    print(f"\n### {kind}: cProfile of 20 steps, by tottime")
    pstats.Stats(pr).sort_stats("tottime").print_stats(25)
