"""Where a training step's time goes: ``torch.profiler`` over a few steps, each kernel classed by its name (GEMM,
attention, quantize, LayerNorm, elementwise, optimizer, other).

On CUDA the table counts GPU kernel time per step; on the CPU, the time of the top-level operators (a CPU run
says nothing about a GPU's split, it checks that the profile works). ``lowbit bench model --profile`` and
``bench/probes/profile_step.py`` use it.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["CLASSES", "StepProfile", "add_profile_argument", "kernel_class", "profile_row", "profile_steps"]

# first match wins; lowbit's Triton kernels by their names (kernels/_triton_*.py, optim/_fused.py)
CLASSES: list[tuple[str, str]] = [
    ("optimizer", r"adam|foreach|multi_tensor|_phase[12]_tile|clamp_min|norm_kernel|reduce_kernel.*norm"),
    ("attention", r"flash|fmha|attention|sdpa|efficient_attention|cudnn.*(?:mha|sdpa)"),
    ("gemm", r"gemm|_gemm|nvjet|cutlass|sm90_xmma|xmma|cublas|matmul|_mm_|scaled_mm|wgmma|splitK"
             r"|addmm|aten::(?:mm|bmm|linear)\b|(?:Mm|Addmm|Bmm)Backward"),  # the last: the CPU's operators
    ("quantize", r"quantiz|_absmax|_cast|_encode|_dequant|amax|float8|fp8"),
    ("layernorm", r"layer_norm|layernorm|LayerNorm|native_layer_norm"),
    ("gelu/elementwise", r"gelu|elementwise|vectorized|unrolled|copy|fill|add|mul"),
]


def kernel_class(name: str) -> str:
    """The class of a kernel (or operator) name: the first of :data:`CLASSES` whose pattern matches, else "other"."""
    for cls, pat in CLASSES:
        if re.search(pat, name, re.IGNORECASE):
            return cls
    return "other"


@dataclass
class StepProfile:
    """Per step: milliseconds per class, and per kernel (µs, calls), launches; ``device``: "cuda" or "cpu"."""

    steps: int
    device: str
    per_class_ms: dict[str, float] = field(default_factory=dict)
    kernels: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (µs per step, calls per step)
    launches: float = 0.0
    wall_ms: float = 0.0  # median host time of a profiled step, each ended by a device sync (profiler overhead in it)

    @property
    def busy(self) -> float:
        """Kernel time over wall time: well under 1 means the step waits on the host (launch-bound)."""
        return self.total_ms / self.wall_ms if self.wall_ms else 0.0

    @property
    def total_ms(self) -> float:
        return sum(self.per_class_ms.values())

    def class_table(self) -> str:
        total = self.total_ms or 1.0
        head = f"| class | ms/step ({'GPU' if self.device == 'cuda' else 'CPU operators'}) | share |\n|---|---:|---:|\n"
        return head + "\n".join(f"| {c} | {ms:.3f} | {100 * ms / total:.1f}% |"
                                for c, ms in sorted(self.per_class_ms.items(), key=lambda kv: -kv[1]))

    def kernel_table(self, top: int = 40) -> str:
        lines = [f"top {top} of {len(self.kernels)} kernels (µs per step, calls per step):"]
        for name, (us, calls) in sorted(self.kernels.items(), key=lambda kv: -kv[1][0])[:top]:
            lines.append(f"  {us:10.0f} us {calls:6.0f}x  [{kernel_class(name)}] {name[:120]}")
        return "\n".join(lines)

    def text(self, title: str, top: int = 40) -> str:
        what = "GPU kernels" if self.device == "cuda" else "CPU operators"
        return (f"### {title}\n{self.total_ms:.2f} ms/step of {what} in {self.wall_ms:.2f} ms of wall time "
                f"({100 * self.busy:.0f}% busy), {self.launches:.0f} launches/step, {self.steps} profiled steps\n\n"
                f"{self.class_table()}\n\n{self.kernel_table(top)}\n")


def profile_steps(step: Callable[[], None], steps: int, device: torch.device) -> StepProfile:
    """Run ``step`` ``steps`` times under ``torch.profiler`` (after the caller's warm-up) and class what ran."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    walls: list[float] = []
    with profile(activities=acts) as prof:
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize(device)
            walls.append((time.perf_counter() - t0) * 1e3)
    out = StepProfile(steps=steps, device="cuda" if cuda else "cpu", wall_ms=statistics.median(walls))
    per_class: dict[str, float] = defaultdict(float)
    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for e in prof.events():
        if getattr(e, "is_user_annotation", False):
            continue  # a record_function range (Optimizer.step#...) mirrored on the GPU: its kernels count already
        if cuda and e.device_type == torch.autograd.DeviceType.CUDA:
            us = e.device_time / steps
        elif not cuda and e.cpu_parent is None:
            us = e.cpu_time / steps
        else:
            continue
        per_class[kernel_class(e.name)] += us / 1e3
        k = kernels[e.name]
        k[0] += us
        k[1] += 1 / steps
        out.launches += 1 / steps
    out.per_class_ms = dict(per_class)
    out.kernels = {n: (us, calls) for n, (us, calls) in kernels.items()}
    return out


def add_profile_argument(parser: argparse.ArgumentParser, row_name: str) -> None:
    """``--profile [STEPS]`` of ``lowbit bench step`` / ``bench model`` (``row_name``: how a row's file is named)."""
    parser.add_argument("--profile", type=int, nargs="?", const=2, default=0, metavar="STEPS",
                        help="after each row's timing, STEPS (default 2) more steps under torch.profiler: GPU ms per "
                             f"kernel class in the row, the top kernels in OUT/profile/{row_name}.txt")


def profile_row(row: dict[str, Any], step: Callable[[], None], args: argparse.Namespace, device: torch.device,
                title: str) -> StepProfile:
    """``--profile N`` of ``lowbit bench model`` / ``bench step``: N more steps under the profiler after a row's
    timing. The ms per class go into the row (``profile_ms``; ``profile_busy``: kernel time over wall time), the
    class and kernel tables to stdout and, with ``--out``, to ``OUT/profile/<title>.txt`` (``profile_file``)."""
    from lowbit.atomic_io import atomic_write_text

    prof = profile_steps(step, args.profile, device)
    row["profile_ms"] = {c: round(ms, 3) for c, ms in sorted(prof.per_class_ms.items(), key=lambda kv: -kv[1])}
    row["profile_busy"] = round(prof.busy, 3)
    text = prof.text(f"{title} (batch {row.get('batch')}, compiled: {row.get('compiled')})")
    print(text, flush=True)
    if args.out:
        path = Path(args.out) / "profile" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", title)[:120] + ".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        row["profile_file"] = str(path)
    return prof
