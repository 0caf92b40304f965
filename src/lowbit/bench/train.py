"""``lowbit bench train``: ``lowbit train`` per recipe, run as a user runs it, and the numbers its books report.

Each row is one ``lowbit train`` process (one after another on the same device): ``--preset P --batch-size B
--steps N --recipe R --data synthetic --zeroshot none --save-every -1`` (no checkpoints, no evaluation: the steps
alone), the trainer's default compile (``auto``) or ``--no-compile``. The table is read from each run's
``summary.json``: steady images/s (``samples_per_s_steady``: without the first steps, which compile and autotune),
ms per step, the ratio to the bf16 row, MFU (``mfu_steady``) and model TFLOP/s, the share of the steps spent waiting
for data (``data_wait_frac``), peak memory (``peak_memory_gb``), what compile chose (``compiled``) and the process's
wall time. A field the trainer does not write is a blank cell, not an error; a run that fails or passes ``--limit``
is a row with its error and log. ``bench step`` times the model's step alone (random tensors on the device); this
is the whole trainer (data, logging, bookkeeping), so the two differ by what the trainer adds.

    lowbit bench train --preset vit-b-32 --batch-size 256 --steps 40 --recipe bf16 fp8-switchback --out DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lowbit.bench.common import BASELINES, environment, markdown_table, save_results, write_results

HELP = "lowbit train per recipe as a user runs it (synthetic data): steady images/s, MFU, data wait, peak memory"

DEFAULT_RECIPES = ["bf16", "fp8-switchback"]
COLUMNS = ["preset", "recipe", "batch", "compiled", "images_per_s", "ms_per_step", "vs_bf16", "tflops", "mfu",
           "data_wait", "peak_mem_GiB", "final_loss", "wall_s", "error"]


def train_command(args: argparse.Namespace, recipe: str, run_dir: Path) -> list[str]:
    """The ``lowbit train`` command line of one row (this interpreter); ``RECIPE:fused`` adds ``--fuse``,
    ``RECIPE:per-linear`` ``--no-fuse`` (a plain name: the trainer's default, ``fuse: auto``)."""
    name, _, variant = recipe.partition(":")
    if variant not in ("", "fused", "per-linear"):
        raise ValueError(f"bench train: unknown recipe variant {recipe!r} (RECIPE, RECIPE:fused or RECIPE:per-linear)")
    cmd = [sys.executable, "-m", "lowbit", "train", "--preset", args.preset, "--batch-size", str(args.batch_size),
           "--recipe", name, "--data", args.data, "--steps", str(args.steps), "--zeroshot", "none",
           "--save-every", "-1", "--no-progress", "--overwrite", "--out", str(run_dir)]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    if args.device:
        cmd += ["--device", args.device]
    if args.no_compile:
        cmd.append("--no-compile")
    if variant:
        cmd.append("--fuse" if variant == "fused" else "--no-fuse")
    return cmd


def row_from_summary(summary: dict[str, Any], batch: int) -> dict[str, Any]:
    """A row's numbers from ``summary.json`` (each by ``.get``: a field this trainer does not write stays blank)."""
    steady = summary.get("samples_per_s_steady")
    flops = summary.get("flops_per_sample")
    row: dict[str, Any] = {
        "compiled": summary.get("compiled"),
        "images_per_s": steady,
        "ms_per_step": (summary.get("global_batch") or batch) / steady * 1000 if steady else None,
        "tflops": flops * steady / 1e12 if flops and steady else None,
        "data_wait": summary.get("data_wait_frac"),
        "peak_mem_GiB": summary.get("peak_memory_gb"),
        "final_loss": summary.get("final_loss"),
        "device": summary.get("device"),
    }
    if "mfu_steady" in summary:  # None there: the device's peak is unknown ("unknown" in the table)
        row["mfu"] = summary["mfu_steady"]
    return row


def run_one(args: argparse.Namespace, recipe: str, runs: Path) -> dict[str, Any]:
    """One ``lowbit train`` process: its row (``error`` when it failed or passed ``--limit``)."""
    slug = recipe.replace(":", "-")  # a portable folder name (fp8-switchback-fused)
    run_dir = runs / slug
    log = runs / f"{slug}.log"
    cmd = train_command(args, recipe, run_dir)
    row: dict[str, Any] = {"preset": args.preset, "recipe": recipe, "batch": args.batch_size, "log": str(log)}
    t0 = time.perf_counter()
    with log.open("w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=args.limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        except BaseException:  # Ctrl-C: no orphaned trainer left on the GPU
            proc.kill()
            proc.wait()
            raise
    row["wall_s"] = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    row["first_line"] = next((ln for ln in text.splitlines() if ln.startswith("lowbit train:")), "")
    summary = run_dir / "summary.json"
    if rc is None:
        row["error"] = f"passed --limit {args.limit:.0f} s (log: {log})"
    elif rc != 0 or not summary.is_file():
        last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
        row["error"] = f"lowbit train exited with {rc}: {last}"[:300]
    else:
        row.update(row_from_summary(json.loads(summary.read_text()), args.batch_size))
    return row


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    """Every recipe's run; the table of finished rows is written after each and at the end, whatever ends it."""
    import torch

    recipes = list(dict.fromkeys(args.recipes))
    payload: dict[str, Any] = {"env": environment(torch.device("cpu")), "args": {k: v for k, v in vars(args).items()
                                                                                  if not k.startswith("_")},
                               "rows": []}
    payload["env"]["device"] = "(from the runs' summary.json)"
    with tempfile.TemporaryDirectory(prefix="lowbit-bench-train-") as tmp:
        runs = Path(args.out) / "runs" if args.out else Path(tmp)
        runs.mkdir(parents=True, exist_ok=True)
        base: float | None = None
        try:
            for recipe in recipes:
                print(f"[{args.preset} {recipe}] lowbit train, batch {args.batch_size}, {args.steps} steps"
                      + (", --no-compile" if args.no_compile else ", compile auto"), flush=True)
                row = run_one(args, recipe, runs)
                if row.get("device"):
                    payload["env"]["device"] = row.pop("device")
                if recipe in BASELINES and row.get("images_per_s"):
                    base = row["images_per_s"]
                if base and row.get("images_per_s"):
                    row["vs_bf16"] = row["images_per_s"] / base
                payload["rows"].append(row)
                save_results(args.out, "train", payload, table(payload))
                print(f"[{args.preset} {recipe}] " + (f"ERROR {row['error']}" if "error" in row else
                      f"{row['images_per_s'] or float('nan'):.1f} img/s steady, {row['wall_s']:.0f} s; "
                      f"{row['first_line']}"), flush=True)
        except KeyboardInterrupt:
            payload["interrupted"] = f"stopped by Ctrl-C after {len(payload['rows'])} run(s)"
            print(f"lowbit bench train: {payload['interrupted']}; the table holds the finished runs", file=sys.stderr)
        finally:
            write_results(args.out, "train", payload, table(payload))
    return payload


def table(payload: dict[str, Any]) -> str:
    """The rows, then each run's first line (what the trainer chose)."""
    rows = payload["rows"]
    lines = [markdown_table(rows, COLUMNS), "", "First lines (what each run chose):", ""]
    lines += [f"- {r['recipe']}: `{r.get('first_line', '')}`" for r in rows]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="vit-b-32", help="CLIP preset (lowbit.models)")
    parser.add_argument("--recipe", "--recipes", dest="recipes", nargs="+", default=DEFAULT_RECIPES,
                        help="one lowbit train run per recipe, in this order (bf16: the ratios' baseline; "
                        "RECIPE:fused: with --fuse, RECIPE:per-linear: with --no-fuse; a plain name: the trainer's default, "
                        "fuse auto)")
    parser.add_argument("--batch-size", type=int, default=64, help="lowbit train --batch-size")
    parser.add_argument("--steps", type=int, default=40,
                        help="steps per run (the trainer's steady rate leaves out the first min(5, steps/2))")
    parser.add_argument("--no-compile", action="store_true", help="lowbit train --no-compile (default: compile auto)")
    parser.add_argument("--data", default="synthetic", help="lowbit train --data (default: synthetic)")
    parser.add_argument("--workers", type=int, default=None, help="lowbit train --workers (default: its own)")
    parser.add_argument("--device", default=None, help="lowbit train --device (default: its own, auto)")
    parser.add_argument("--limit", type=float, default=600, help="seconds per run before it is stopped")
    parser.add_argument("--out", default=None,
                        help="directory for train.json and train.md (rewritten per run) and the runs (runs/RECIPE)")


def check(args: argparse.Namespace) -> None:
    from lowbit.models import list_presets

    if args.steps < 1 or args.batch_size < 1 or args.limit <= 0:
        raise ValueError("--steps and --batch-size must be >= 1, --limit > 0")
    if args.preset not in list_presets():
        raise ValueError(f"--preset {args.preset!r} is not a CLIP preset; choose from {', '.join(list_presets())}")


def cpu_flops(args: argparse.Namespace) -> float | None:
    """Model FLOPs of every run's steps, for ``lowbit bench``'s CPU estimate."""
    from lowbit.models import get_config
    from lowbit.models.flops import clip_train_flops

    per_image = clip_train_flops(get_config(args.preset), args.batch_size)
    return per_image * args.batch_size * args.steps * len(dict.fromkeys(args.recipes))


def run(args: argparse.Namespace) -> int:
    check(args)
    payload = run_train(args)
    return 130 if payload.get("interrupted") else 0
