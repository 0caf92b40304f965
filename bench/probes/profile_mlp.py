"""Where a ViT-H/14 MLP block's fwd+bwd time goes per recipe, eager and compiled (torch.profiler, CUDA time).

    python bench/probes/profile_mlp.py fp8-tensorwise fp8-switchback
"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from lowbit.bench.linear import mlp_step

for kind in sys.argv[1:] or ["fp8-tensorwise"]:
    for compiled in (False, True):
        one = mlp_step(kind, "vit-h-14", compiled)
        for _ in range(5):
            one()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                one()
            torch.cuda.synchronize()
        print(f"\n### {kind} {'compiled' if compiled else 'eager'}: CUDA time per step, top kernels (10 steps)")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70))
