"""Shared benchmark plumbing: timing (median of many runs after warm-up), environment, output files, MFU, and
the pieces ``bench step`` and ``bench model`` both use (the baseline names, torchao's anchors, the trainer's
optimizer, the recipe list, the clean-up between rows)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.hardware import format_mfu, mfu, mfu_warning
from lowbit.nn.compile import compile_blocks, repeated_blocks  # noqa: F401 (repeated_blocks: re-exported)

# The plain model (nn.Linear) every ratio is taken against.
BASELINES = ("bf16", "none")

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


def is_lowbit_recipe(recipe: str) -> bool:
    """Not a baseline (bf16 / none, the model as built) nor a torchao anchor: a recipe lowbit converts to (a name
    with a ``:fused`` suffix counts as lowbit's: ``bf16:fused`` is its fused 16-bit path)."""
    return recipe not in BASELINES and not recipe.startswith("torchao-")


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
    from lowbit.kernels import _inductor_rows, ops

    if ops.compiled_quantize() != "kernel":  # settings that change what a compiled row runs (their defaults unsaid)
        env["compiled_quantize"] = ops.compiled_quantize()
    if _inductor_rows.persistent_rows():
        env["persistent_rows"] = _inductor_rows.persistent_rows()
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


# How a column is printed where plain float formatting would mislead: MFU as a percentage, flagged when
# implausible, "unknown" where the device's peak is (the CPU); blank in a row without it (an error row).
FORMATS: dict[str, Callable[[Any], str]] = {"mfu": format_mfu,
                                            "data_wait": lambda v: "" if v is None else f"{100 * v:.1f}%"}


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any, column: str = "", present: bool = False) -> str:
        if column in FORMATS and present:  # None: "unknown" (a row that ran, on a device without a known peak)
            return FORMATS[column](v)
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c), c, c in r) for c in columns) + " |" for r in rows]
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
        write_atomic(d / f"{name}.json", json.dumps(payload, indent=2, default=str))
        write_atomic(d / f"{name}.md", header + table + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader (or a run killed mid-write)
    sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- MFU
def add_mfu(row: dict[str, Any], flops_per_sample: float | None, samples_per_s: float | None,
            device_name: str) -> str | None:
    """Set ``row["tflops"]`` (model TFLOP/s) and ``row["mfu"]`` (a fraction of the device's dense bf16 peak, None
    where the peak is unknown, e.g. on the CPU); returns ``lowbit.hardware.mfu_warning``'s line above 75%."""
    if not flops_per_sample or not samples_per_s:
        return None
    row["tflops"] = flops_per_sample * samples_per_s / 1e12
    row["mfu"] = mfu(flops_per_sample, samples_per_s, device_name)
    return mfu_warning(row["mfu"], f"{row.get('recipe', 'a row')}'s model throughput")


# ---------------------------------------------------------------------------------------------- a run's rows
@dataclass
class RowTable:
    """The rows of one ``lowbit bench NAME`` run (``step``, ``model``) as they finish: each row's ratio to its
    group's baseline row (``vs_bf16``) and its MFU, ``NAME.json`` / ``NAME.md`` in ``out`` rewritten after every row,
    one line printed per row; ``recording()`` writes and prints the table whatever ends the run."""

    name: str  # "step" / "model": the command and the file names
    out: str | None
    columns: list[str]
    payload: dict[str, Any]  # env, args, ...; its "rows" list grows by one per row
    rate: str  # a row's throughput key, which vs_bf16 compares and the row's line prints
    samples: str  # a row's samples/s key, for MFU
    unit: str = ""  # the throughput's unit as printed, where a row has no "unit" of its own
    base: float | None = None  # the current group's baseline throughput

    def new_group(self) -> None:
        """The rows that follow compare with a baseline row of their own (the next preset or model)."""
        self.base = None

    def add(self, row: dict[str, Any], label: str, flops_per_sample: float | None,
            detail: Callable[[dict[str, Any]], str] = lambda row: "") -> None:
        """Record ``row`` (an ``error`` row as it is), save the files, print ``[label] ...`` (``detail(row)``
        after the MFU of a row that ran)."""
        err = row.get("error")
        if err is None:
            if row["recipe"] in BASELINES:
                self.base = row[self.rate]
            if self.base:
                row["vs_bf16"] = row[self.rate] / self.base
            warning = add_mfu(row, flops_per_sample, row.get(self.samples), self.payload["env"]["device"])
            if warning:
                print(warning, file=sys.stderr, flush=True)
        self.payload["rows"].append(row)
        save_results(self.out, self.name, self.payload, markdown_table(self.payload["rows"], self.columns))
        if err:
            print(f"[{label}] ERROR {err}", flush=True)
            return
        mem = f", peak {row['peak_mem_GiB']:.1f} GiB" if row.get("peak_mem_GiB") else ""
        mfu_text = f", MFU {format_mfu(row.get('mfu'))}" if "mfu" in row else ""
        print(f"[{label}] {row['ms_per_step']:.1f} ms/step, {row[self.rate]:.1f} {row.get('unit', self.unit)} "
              f"({row.get('vs_bf16') or float('nan'):.3f}x bf16){mfu_text}{detail(row)}{mem}", flush=True)

    @contextlib.contextmanager
    def recording(self) -> Iterator[RowTable]:
        """The table of finished rows written and printed at the end whatever ends the run; Ctrl-C ends it
        quietly (``payload["interrupted"]``, one line on stderr)."""
        try:
            yield self
        except KeyboardInterrupt:
            self.payload["interrupted"] = f"stopped by Ctrl-C after {len(self.payload['rows'])} row(s)"
            print(f"lowbit bench {self.name}: {self.payload['interrupted']}; the table holds the finished rows",
                  file=sys.stderr)
        finally:
            write_results(self.out, self.name, self.payload, markdown_table(self.payload["rows"], self.columns))


# ---------------------------------------------------------------------------------------------- step pieces
def compile_model(model: nn.Module, scope: str, mode: str | None) -> tuple[nn.Module, str]:
    """Compile per ``scope``; returns (what the forward calls, what was compiled, for the table)."""
    if scope == "blocks":
        n = compile_blocks(model, mode)  # lowbit.nn.compile_blocks: what users call
        if n:
            return model, f"blocks ({n})"
        scope = "model"
    if scope == "model":
        return torch.compile(model, mode=mode), "model"
    raise ValueError(f"--compile-scope must be blocks or model, got {scope!r}")


ConvertFn = Callable[[nn.Module, Callable[[str, nn.Module], bool]], nn.Module]


def torchao_anchors() -> dict[str, ConvertFn]:
    """torchao's training linears when torchao is importable: name -> ``convert(model, filter)``."""
    out: dict[str, ConvertFn] = {}
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except Exception:
        return out

    def _f8(recipe: str | None) -> ConvertFn:
        def conv(m: nn.Module, flt: Callable[[str, nn.Module], bool]) -> nn.Module:
            cfg = Float8LinearConfig.from_recipe_name(recipe) if recipe else None
            return convert_to_float8_training(m, module_filter_fn=lambda mod, fqn: flt(fqn, mod), config=cfg)

        return conv

    out["torchao-float8-tensorwise"] = _f8(None)
    out["torchao-float8-rowwise"] = _f8("rowwise")
    try:
        from torchao import quantize_
        from torchao.prototype.quantized_training import int8_mixed_precision_training

        def _int8mp(m: nn.Module, flt: Callable[[str, nn.Module], bool]) -> nn.Module:
            quantize_(m, int8_mixed_precision_training(), filter_fn=lambda mod, fqn: flt(fqn, mod))
            return m

        out["torchao-int8-mixed"] = _int8mp
    except Exception:
        pass
    return out


def make_optimizer(model: nn.Module, name: str, impl: str | None) -> torch.optim.Optimizer:
    """``lowbit train``'s optimizer (its parameter groups: weight decay on matrices only) for ``model``.

    ``impl`` None: exactly the trainer's (default implementation: fused on CUDA); ``"foreach"``: the same groups
    with foreach for every group (torchao's int8 training weights are tensor subclasses the fused kernel cannot
    address).
    """
    from lowbit.train.config import TrainConfig
    from lowbit.train.trainer import _optimizer, _param_groups

    cfg = TrainConfig(optimizer=name, lr=1e-4, beta2=0.98, eps=1e-6, weight_decay=0.2)
    if impl is None:
        return _optimizer(cfg, model)
    groups = _param_groups(model, cfg.weight_decay)
    for g in groups:
        g["foreach"], g["fused"] = True, False
    kw: dict[str, Any] = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    if name == "adamw":
        return torch.optim.AdamW(groups, **kw)
    from lowbit.optim import StableAdamW

    return StableAdamW(groups, **kw)


def cleanup(device: torch.device) -> None:
    """Between rows: free what the last row left (memory, compiled graphs) and reset the peak-memory counter."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(Exception):
        torch._dynamo.reset()


def setup_device(device: torch.device) -> None:
    """What every step row runs under: TF32 matmuls on CUDA (as the trainer), a dynamo cache large enough for
    regional compilation (one graph per tower or block class, reused by all its blocks)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    with contextlib.suppress(Exception):
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)


def requested_recipes(args: argparse.Namespace) -> list[str]:
    """Requested recipes, baseline first (added if missing), then the torchao anchors."""
    recipes = list(dict.fromkeys(args.recipes))
    if not any(r in BASELINES for r in recipes):
        recipes.insert(0, "bf16")
    base = next(r for r in recipes if r in BASELINES)
    recipes = [base] + [r for r in recipes if r != base]
    if not args.no_anchors:
        recipes += [a for a in torchao_anchors() if a not in recipes]
    return recipes
