"""Is a ViT-H/14 MLP fwd+bwd CPU-bound? Per recipe, eager and compiled: the wall time per step with the CPU
issuing back to back (sync at the end only), the CPU time to issue one step, and the fp8 matmul choices.

    python bench/probes/overhead_mlp.py fp8-tensorwise fp8-switchback
"""
import sys
import time

import torch

from lowbit.bench.linear import mlp_step
from lowbit.kernels import matmul

for kind in sys.argv[1:] or ["fp8-tensorwise"]:
    for compiled in (False, True):
        one = mlp_step(kind, "vit-h-14", compiled)
        for _ in range(5):
            one()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        issue = []
        for _ in range(30):
            t = time.perf_counter()
            one()
            issue.append(time.perf_counter() - t)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / 30 * 1e3
        issue.sort()
        print(f"{kind:16s} {'compiled' if compiled else 'eager':8s} wall/step {wall:.3f} ms, CPU issue/step "
              f"median {issue[15] * 1e3:.3f} ms", flush=True)
print("fp8 matmul choices:", {(*k[:3], str(k[3]), str(k[4]), k[5], k[6]): v for k, v in matmul._FP8_CHOICE.items()})
