"""``lowbit bench WHAT``: benchmarks (GPU timings are ratios measured side by side in one run)."""

from __future__ import annotations

import argparse
import importlib

HELP = "benchmarks: linear | mlp | matmul | memory | sweep | optim | step | model"

_LINEAR_FAMILY = ("linear", "mlp", "matmul", "memory", "sweep")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lowbit.bench import linear

    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    for what in _LINEAR_FAMILY:
        p = sub.add_parser(what, help=linear.WHAT[what], description=linear.WHAT[what])
        linear.add_arguments(p)
        p.set_defaults(_bench="lowbit.bench.linear")
    optim = importlib.import_module("lowbit.bench.optim")
    p = sub.add_parser("optim", help=optim.HELP, description=optim.HELP)
    optim.add_arguments(p)
    p.set_defaults(_bench="lowbit.bench.optim")
    step = importlib.import_module("lowbit.bench.step")
    p = sub.add_parser("step", help=step.HELP, description=step.HELP)
    step.add_arguments(p)
    p.set_defaults(_bench="lowbit.bench.step")
    model = importlib.import_module("lowbit.bench.model")  # a timm / Hugging Face model's step (timm, transformers
    p = sub.add_parser("model", help=model.HELP, description=model.HELP)  # imported only when it runs)
    model.add_arguments(p)
    p.set_defaults(_bench="lowbit.bench.model")


CPU_WARNING = (
    "lowbit bench {what}: warning: running on the CPU ({why}). CPU timings say nothing about the GPU speed-ups "
    "this project reports (those are ratios measured on an H100, bench/results/h100/): lowbit's quantized layers "
    "run the PyTorch reference numerics here. Use a CPU run only to check that the benchmark works."
)


def cpu_warning(args: argparse.Namespace) -> str | None:
    """The warning to print when this benchmark's timings come from the CPU (``memory`` counts bytes: none)."""
    if args.what == "memory":
        return None
    import torch

    device = str(getattr(args, "device", "auto") or "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not device.startswith("cpu"):
        return None
    why = "no CUDA GPU found" if not torch.cuda.is_available() else f"--device {device}"
    return CPU_WARNING.format(what=args.what, why=why)


def run(args: argparse.Namespace) -> int:
    import sys

    module = importlib.import_module(args._bench)
    check = getattr(module, "check", None)  # bad options and missing packages: one error line, before the warning
    if check is not None:
        check(args)
    warning = cpu_warning(args)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return int(module.run(args) or 0)
