"""``lowbit bench WHAT``: benchmarks (GPU timings are ratios measured side by side in one run)."""

from __future__ import annotations

import argparse
import importlib

HELP = "benchmarks: linear | mlp | matmul | memory | sweep | optim | step"

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


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args._bench).run(args) or 0)
