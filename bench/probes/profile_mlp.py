"""Where an MLP block's fwd+bwd time goes per recipe (torch.profiler, CUDA time per kernel), eager and compiled.

    python bench/probes/profile_mlp.py fp8-tensorwise fp8-switchback
    python bench/probes/profile_mlp.py --block ln-mlp --modes eager --shape vit-h-14 nn.Linear bf16 switchback
"""
import argparse

from lowbit.bench.linear import BLOCKS, SHAPES, profile_mlp_step

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("kinds", nargs="*", default=["fp8-tensorwise"])
p.add_argument("--block", choices=BLOCKS, default="mlp")
p.add_argument("--shape", choices=list(SHAPES), default="vit-h-14")
p.add_argument("--modes", nargs="+", choices=["eager", "compiled"], default=["eager", "compiled"])
a = p.parse_args()
for kind in a.kinds:
    for mode in a.modes:
        prof = profile_mlp_step(kind, a.shape, mode == "compiled", block=a.block, warmup=5, steps=10)
        total = sum(e.device_time_total for e in prof.key_averages()) / 10 / 1e3
        print(f"\n### {kind} {a.block} {a.shape} {mode}: {total:.3f} ms CUDA time per step; top kernels (10 steps)")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70))
