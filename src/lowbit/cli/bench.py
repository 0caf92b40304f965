"""``lowbit bench WHAT``: benchmarks (GPU timings are ratios measured side by side in one run)."""

from __future__ import annotations

import argparse
import importlib

HELP = "benchmarks: linear | mlp | matmul | memory | sweep | optim | step | model | train"

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
    train = importlib.import_module("lowbit.bench.train")  # lowbit train per recipe, one process each
    p = sub.add_parser("train", help=train.HELP, description=train.HELP)
    train.add_arguments(p)
    p.set_defaults(_bench="lowbit.bench.train")
    for p in sub.choices.values():
        p.add_argument("--allow-cpu", action="store_true",
                       help=f"run on the CPU even when the estimate is over {CPU_LIMIT_S} s (refused otherwise)")


CPU_WARNING = (
    "lowbit bench {what}: warning: running on the CPU ({why}){eta}. CPU timings say nothing about the GPU speed-ups "
    "this project reports (those are ratios measured on an H100, bench/results/h100/): lowbit's quantized layers "
    "run the PyTorch reference numerics here. Use a CPU run only to check that the benchmark works."
)
CPU_LIMIT_S = 120  # a CPU run estimated past this is refused without --allow-cpu


def _cpu_device(args: argparse.Namespace) -> str | None:
    """Why this benchmark runs on the CPU ("no CUDA GPU found", "--device cpu"), or None when it does not."""
    import torch

    device = str(getattr(args, "device", "auto") or "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not device.startswith("cpu"):
        return None
    return "no CUDA GPU found" if not torch.cuda.is_available() else f"--device {device}"


def cpu_rate() -> float:
    """FLOP/s of this CPU on a float32 matmul (512³, best of 3): a rough upper bound of what a benchmark's
    layers reach here (bf16 and the quantized recipes' reference numerics run slower)."""
    import time

    import torch

    a = torch.randn(512, 512)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * 512**3 / max(best, 1e-9)


def cpu_estimate(args: argparse.Namespace, rate: float | None = None) -> float | None:
    """Seconds this benchmark would take at least on the CPU (its model FLOPs over ``cpu_rate``), or None where
    the benchmark cannot say before it runs (``bench model``, ``optim``, ``memory``)."""
    module = importlib.import_module(args._bench)
    flops_of = getattr(module, "cpu_flops", None)
    flops = flops_of(args) if flops_of is not None else None
    if not flops:
        return None
    return flops / (rate or cpu_rate())


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.1f} hours"


def cpu_warning(args: argparse.Namespace, estimate: float | None = None) -> str | None:
    """The warning to print when this benchmark's timings come from the CPU (``memory`` counts bytes: none)."""
    if args.what == "memory":
        return None
    why = _cpu_device(args)
    if why is None:
        return None
    eta = f"; expect at least {_duration(estimate)}" if estimate else ""
    return CPU_WARNING.format(what=args.what, why=why, eta=eta)


def cpu_refusal(args: argparse.Namespace, estimate: float | None) -> str | None:
    """The one line refusing a CPU run estimated past ``CPU_LIMIT_S`` (without ``--allow-cpu``), else None."""
    if estimate is None or estimate <= CPU_LIMIT_S or getattr(args, "allow_cpu", False) or args.what == "memory":
        return None
    why = _cpu_device(args)
    if why is None:
        return None
    smaller = {"step": ", try --preset tiny", "linear": ", try --tokens 64", "mlp": ", try --tokens 64",
               "sweep": ", try --tokens 64"}.get(args.what, "")
    return (f"bench {args.what} on the CPU ({why}) would take at least {_duration(estimate)} (its model FLOPs at "
            f"this CPU's float32 matmul rate; the quantized recipes run slower reference numerics here) and say "
            f"nothing about GPU speed: run it on a GPU{smaller}, or pass --allow-cpu")


def cpu_notes(args: argparse.Namespace) -> list[str]:
    """Options a CPU run ignores, each with why (one line each)."""
    if _cpu_device(args) is None or args.what not in ("step", "model"):
        return []
    if getattr(args, "cudagraphs", False):
        return [f"lowbit bench {args.what}: note: --cudagraphs is ignored on the CPU (CUDA graphs need a CUDA "
                "device): the compiled rows run without them"]
    return []


def run(args: argparse.Namespace) -> int:
    import sys

    module = importlib.import_module(args._bench)
    check = getattr(module, "check", None)  # bad options and missing packages: one error line, before the warning
    if check is not None:
        check(args)
    estimate = cpu_estimate(args) if _cpu_device(args) is not None else None
    refusal = cpu_refusal(args, estimate)
    if refusal:
        raise ValueError(refusal)
    for line in [cpu_warning(args, estimate), *cpu_notes(args)]:
        if line:
            print(line, file=sys.stderr, flush=True)
    return int(module.run(args) or 0)
