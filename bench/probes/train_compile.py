"""``lowbit train``'s compile default against ``--no-compile``, per recipe, as a user runs it (issue #18).

Each row is one ``lowbit train`` process (run one after another on the same GPU): its first line (what the trainer
chose), the steady-state images/s it reports (``summary.json`` ``samples_per_s_steady``: the step times after the
first five steps, loader included), the whole-run average (compilation and warm-up included), peak GPU memory and
the process's wall time. Ratios: each compile setting against ``--no-compile`` of the same recipe, and each recipe
against bf16 under the same setting.

    python bench/probes/train_compile.py --data /tmp/fm --preset vit-b-32 --batch-size 256 --workers 14 \\
        --steps 40 --recipes bf16 fp8-switchback --out OUT
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {"auto": [], "no-compile": ["--no-compile"]}


def run_one(args: argparse.Namespace, recipe: str, setting: str, out: Path) -> dict:
    run_dir = out / f"{recipe}-{setting}"
    cmd = [sys.executable, "-m", "lowbit", "train", "--preset", args.preset, "--batch-size", str(args.batch_size),
           "--recipe", recipe, "--data", args.data, "--workers", str(args.workers), "--steps", str(args.steps),
           "--zeroshot", "none", "--no-progress", "--save-every", "-1", "--overwrite", "--out", str(run_dir),
           *SETTINGS[setting]]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.limit)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = "timeout", (e.stdout or b"").decode() + (e.stderr or b"").decode()
    wall = time.perf_counter() - t0
    (out / f"{recipe}-{setting}.log").write_text(" ".join(cmd) + "\n" + text)
    row = {"recipe": recipe, "setting": setting, "rc": rc, "wall_s": wall,
           "first_line": next((ln for ln in text.splitlines() if ln.startswith("lowbit train:")), "")}
    summary = run_dir / "summary.json"
    if rc == 0 and summary.exists():
        s = json.loads(summary.read_text())
        row.update(steady=s.get("samples_per_s_steady"), average=s.get("samples_per_s"),
                   peak_gb=s.get("peak_memory_gb"), final_loss=s.get("final_loss"), device=s.get("device"))
    print(json.dumps(row), flush=True)
    return row


def versions() -> str:
    import torch

    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "none"
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU"
    return f"{dev}, torch {torch.__version__}, Triton {tv}"


def table(rows: list[dict], args: argparse.Namespace) -> str:
    by = {(r["recipe"], r["setting"]): r for r in rows}
    lines = [f"# `lowbit train` compile default vs `--no-compile`: {args.preset}, batch {args.batch_size}, "
             f"{args.steps} steps, data `{args.data}`, {args.workers} workers", "", f"{versions()}", "",
             f"Command: `python bench/probes/train_compile.py {' '.join(sys.argv[1:])}`", "",
             "| recipe | setting | steady img/s | × no-compile | × bf16 (same setting) | run average img/s | "
             "peak GiB | wall s | final loss |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v: float | None, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    for r in rows:
        s = r.get("steady")
        eager = by.get((r["recipe"], "no-compile"), {}).get("steady")
        bf16 = by.get(("bf16", r["setting"]), {}).get("steady")
        if s is None:
            lines.append(f"| {r['recipe']} | {r['setting']} | failed ({r['rc']}) | | | | | {r['wall_s']:.0f} | |")
            continue
        lines.append(f"| {r['recipe']} | {r['setting']} | {s:.0f} | {f(s / eager if eager else None, '.2f')} | "
                     f"{f(s / bf16 if bf16 else None, '.2f')} | {f(r.get('average'), '.0f')} | "
                     f"{f(r.get('peak_gb'), '.1f')} | {r['wall_s']:.0f} | {f(r.get('final_loss'), '.4f')} |")
    lines += ["", "First lines (what the trainer chose):", ""]
    lines += [f"- {r['recipe']} {r['setting']}: `{r['first_line']}`" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--preset", default="vit-b-32")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--recipes", nargs="+", default=["bf16", "fp8-switchback"])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--limit", type=float, default=300, help="seconds per run")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run_one(args, recipe, setting, args.out) for recipe in args.recipes for setting in args.settings]
    (args.out / "train_compile.json").write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                                            "rows": rows}, indent=1))
    text = table(rows, args)
    (args.out / "train_compile.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
