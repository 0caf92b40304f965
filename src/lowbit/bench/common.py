"""Shared benchmark plumbing: timing (median of many runs after warm-up), environment, output files."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

# "RECIPE:fused" / "RECIPE:per-linear": one row with / without convert(fuse=True), whatever the default
FUSE_SUFFIXES = {"fused": True, "per-linear": False}


def split_recipe(recipe: str, fuse: bool) -> tuple[str, bool]:
    """``"fp8-switchback:fused"`` -> ("fp8-switchback", True), ``"switchback:per-linear"`` -> (.., False), a plain
    name -> (name, ``fuse``): one run can time both conversions against one baseline."""
    name, sep, how = recipe.partition(":")
    if not sep:
        return recipe, fuse
    if how not in FUSE_SUFFIXES:
        raise ValueError(f"recipe {recipe!r}: the suffix after ':' must be one of {', '.join(FUSE_SUFFIXES)}")
    return name, FUSE_SUFFIXES[how]


def error_line(e: BaseException) -> str:
    """A benchmark row's error: the exception's type and first line (at most 200 characters)."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


def environment(device: torch.device) -> dict[str, Any]:
    """Device name and software versions, recorded with every result."""
    from lowbit._version import __version__

    env: dict[str, Any] = {"lowbit": __version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # pragma: no cover
        env["triton"] = None
    if device.type == "cuda":
        env["device"] = torch.cuda.get_device_name(device)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        env["cuda"] = torch.version.cuda
    else:
        env["device"] = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return env


def bench(fn: Callable[[], Any], device: torch.device, grad_to_none: Sequence[torch.Tensor] = (),
          warmup_ms: float = 50, rep_ms: float = 300) -> float:
    """Median milliseconds of ``fn``: ``triton.testing.do_bench`` on CUDA (L2 flushed between calls), a
    ``perf_counter`` loop on the CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=list(grad_to_none),
                              return_mode="median"))
    fn()
    times = []
    deadline = time.perf_counter() + rep_ms / 1000
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 200):
        for t in grad_to_none:
            t.grad = None
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def time_steps(step: Callable[[], Any], steps: int, device: torch.device) -> list[float]:
    """Milliseconds of each of ``steps`` calls of ``step`` (one training step each): CUDA events on CUDA (the GPU
    time of the step, queued back to back), ``perf_counter`` on the CPU. Warm-up is the caller's."""
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in events]
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1000)
    return times


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(out: str | None, name: str, payload: dict[str, Any], table: str) -> None:
    """Print the table; with ``out`` also write ``NAME.json`` and ``NAME.md`` there."""
    header = f"## lowbit bench {name}\n\n{payload['env']}\n\n"
    print(header + table)
    save_results(out, name, payload, table)


def save_results(out: str | None, name: str, payload: dict[str, Any], table: str) -> None:
    """With ``out``, write ``NAME.json`` and ``NAME.md`` there (nothing printed: a benchmark rewrites them after
    every row, so a run cut short keeps its rows)."""
    header = f"## lowbit bench {name}\n\n{payload['env']}\n\n"
    if out:
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
        (d / f"{name}.md").write_text(header + table + "\n")
