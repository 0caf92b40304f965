"""Where a full CLIP training step's time goes, per recipe: GPU time per kernel class and per transformer block,
kernel launches per step, and the CPU-bound share (wall time the GPU sits idle), from ``torch.profiler``.

The step is ``lowbit bench step``'s (``lowbit.train.step.train_step``: both towers, loss, backward, grad norm,
StableAdamW), on random data, bf16 autocast. Each recipe: ``--warmup`` steps, then ``--steps`` profiled steps.
Kernels are classed by name (GEMM, attention, quantize, LayerNorm, optimizer, other); "per block" divides the
classes that live in the blocks by the number of transformer blocks (both towers).

    python bench/probes/profile_step.py --preset vit-h-14 --batch-size 96 bf16 fp8-switchback fp8-switchback:fused
    python bench/probes/profile_step.py --preset tiny --device cpu bf16 switchback     # CPU smoke test
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from lowbit.bench.profile import kernel_class
from lowbit.bench.step import build_model, compile_model, make_optimizer, random_batch
from lowbit.models.convert import LAYERS
from lowbit.train.env import Env
from lowbit.train.step import train_step
from lowbit.train.trainer import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipes", nargs="+", help="bf16, lowbit recipes, RECIPE:fused")
    p.add_argument("--preset", default="vit-h-14")
    p.add_argument("--batch-size", type=int, default=96)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--compile", choices=["no", "blocks", "cudagraphs"], default="no")
    p.add_argument("--layers", choices=list(LAYERS), default="clip",
                   help="which block linears convert (bench step's --layers; wide: as lowbit.convert's default)")
    p.add_argument("--top", type=int, default=15, help="kernels listed per recipe")
    p.add_argument("--device", default="cuda")
    a = p.parse_args()
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    summary = []
    for recipe in a.recipes:
        torch.manual_seed(0)
        model, converted = build_model(a.preset, recipe, device, layers=a.layers, batch=a.batch_size)
        graphs = a.compile == "cudagraphs"
        fwd = model if a.compile == "no" else compile_model(model, "blocks", "reduce-overhead" if graphs else None)
        images, tokens = random_batch(model, a.batch_size, device)
        opt = make_optimizer(model, "stableadamw", None)
        env = Env(world_size=1, rank=0, parallel=None, device=device, precision="bf16" if cuda else "fp32")
        tr = Trainer(model=fwd, raw_model=model, optimizer=opt, env=env, graphs=graphs)
        n_blocks = len(model.visual.blocks) + len(model.text.blocks)
        walls: list[float] = []

        def step(i: int, tr: Trainer = tr) -> None:
            t0 = time.perf_counter()
            train_step(tr, [(images, tokens)], i, logging=False)
            if cuda:
                torch.cuda.synchronize(device)
            walls.append(time.perf_counter() - t0)

        for i in range(a.warmup):
            step(i + 1)
        walls.clear()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            for i in range(a.steps):
                step(a.warmup + i + 1)
        wall_ms = statistics.median(walls) * 1e3
        per_class: dict[str, float] = defaultdict(float)
        launches = 0
        kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for e in prof.events():
            if getattr(e, "is_user_annotation", False):
                continue  # a record_function range (Optimizer.step#...) mirrored on the GPU: its kernels count already
            if cuda and e.device_type == torch.autograd.DeviceType.CUDA:
                us = e.device_time / a.steps
            elif not cuda and e.cpu_parent is None:
                us = e.cpu_time / a.steps
            else:
                continue
            per_class[kernel_class(e.name)] += us
            launches += 1
            k = kernels[e.name]
            k[0] += us
            k[1] += 1
        gpu_ms = sum(per_class.values()) / 1e3
        print(f"\n### {a.preset} {recipe} (batch {a.batch_size}, compile {a.compile}, converted {converted})")
        print(f"wall {wall_ms:.2f} ms/step, GPU kernel time {gpu_ms:.2f} ms/step "
              f"({100 * gpu_ms / wall_ms:.0f}% busy), {launches / a.steps:.0f} kernel launches/step, "
              f"{a.batch_size / wall_ms * 1e3:.1f} img/s")
        print("| class | ms/step | per block (us) | share |\n|---|---|---|---|")
        for cls, us in sorted(per_class.items(), key=lambda kv: -kv[1]):
            blk = "" if cls == "optimizer" else f"{us / n_blocks:.0f}"
            print(f"| {cls} | {us / 1e3:.3f} | {blk} | {100 * us / 1e3 / gpu_ms:.1f}% |")
        print(f"top {a.top} kernels (GPU us per step, calls per step):")
        for name, (us, calls) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:a.top]:
            print(f"  {us:9.0f} us  {calls / a.steps:5.0f}x  [{kernel_class(name)}] {name[:110]}")
        summary.append((recipe, wall_ms, gpu_ms, launches / a.steps))
        del model, fwd, opt, tr, prof
        if cuda:
            torch.cuda.empty_cache()
    base = summary[0][1]
    print(f"\n| recipe | wall ms | GPU ms | busy | launches | vs {summary[0][0]} (wall) |\n|---|---|---|---|---|---|")
    for recipe, wall, gpu, launches in summary:
        print(f"| {recipe} | {wall:.2f} | {gpu:.2f} | {100 * gpu / wall:.0f}% | {launches:.0f} | {base / wall:.3f} |")


if __name__ == "__main__":
    main()
