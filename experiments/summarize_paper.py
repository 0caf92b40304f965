#!/usr/bin/env python3
"""Issue 30's report from the runs of ``experiments/run_paper.sh``: the table and the plots.

    python experiments/summarize_paper.py RUNS --out RUNS/summary [--jobs RUNS/jobs.tsv ...] [--title T]

``RUNS`` holds these parts (any may be missing): ``main/<recipe>/seed<k>`` (the recipe table, compared with
``main/bf16``), ``ls-lr<lr>/<recipe>-ls<none|0>/seed<k>`` (layer-scale at a higher learning rate, one part per
lr, compared with that part's ``bf16-lsnone``) and ``spike/<optimizer>/seed<k>`` (AdamW vs StableAdamW with the
RMS monitor).

Writes to ``--out``: ``results.md`` (the headline tables), ``summary.json``, ``loss_curves.png`` (per group:
mean over seeds, band = the seeds' min-max), ``zeroshot.png`` (top-1 per group: seeds as dots, mean ± s.d.),
``spike.png`` (the spike runs' loss and largest per-tensor RMS), and per part ``<part>/`` with
``experiments/summarize.py``'s full output (per-seed rows, Welch's t-tests, spike and feature-magnitude tables).

Throughput comes from each run's ``summary.json``: ``samples_per_s_steady`` (images/s after warm-up), tokens/s =
images/s x (vision tokens + text context), and ``mfu_steady`` when the trainer wrote it, else MFU computed here
from ``lowbit.models.flops.clip_train_flops`` and ``lowbit.hardware``. The runs share one GPU (run_paper.sh runs
several at a time), so a run's images/s is its share, not the recipe's speed; ``--jobs`` adds each call's aggregate
(one jobs file per call).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import summarize as S

BASELINES = {"main": "bf16", "ls": "bf16-lsnone", "spike": None}  # part (ls: every ls-lr<lr>) -> baseline group


def baseline_of(part: str) -> str | None:
    return BASELINES["ls"] if part.startswith("ls") else BASELINES.get(part)


def part_names(root: Path) -> list[str]:
    """The parts under ``root`` in report order: main, the layer-scale parts by learning rate, spike."""
    ls = [p.name for p in root.glob("ls*") if p.is_dir()]
    lr = {n: S._f(n.partition("-lr")[2]) for n in ls}
    ls.sort(key=lambda n: (lr[n] if math.isfinite(lr[n]) else math.inf, n))
    return [p for p in ("main", *ls, "spike") if (root / p).is_dir()]


# ---------------------------------------------------------------------------------------------- reading
def _speed(run_dir: str | None) -> dict[str, Any]:
    """Throughput fields of a run's summary.json: images/s and MFU after warm-up, tokens/s, peak memory."""
    if not run_dir or not (Path(run_dir) / "summary.json").is_file():
        return {}
    try:
        s = json.loads((Path(run_dir) / "summary.json").read_text())
    except json.JSONDecodeError:
        return {}
    ips = s.get("samples_per_s_steady") or s.get("samples_per_s")
    mcfg = s.get("model_config") or {}
    out: dict[str, Any] = {"images_per_s": ips, "peak_memory_gb": s.get("peak_memory_gb"),
                           "samples_seen": s.get("samples_seen"), "device": s.get("device")}
    try:
        from lowbit.models import CLIPConfig

        cfg = CLIPConfig.from_dict(mcfg)
        tokens = (cfg.vision.image_size // cfg.vision.patch_size) ** 2 + 1 + cfg.text.context_length
        out["tokens_per_s"] = ips * tokens if ips else None
        mfu = s.get("mfu_steady")
        if mfu is None and ips:
            from lowbit.hardware import mfu as _mfu
            from lowbit.models.flops import clip_train_flops

            mfu = _mfu(clip_train_flops(cfg, s.get("global_batch") or 1), ips, s.get("device") or "")
        out["mfu"] = mfu
    except Exception:  # an old or partial summary: throughput without MFU
        out.setdefault("tokens_per_s", None)
        out.setdefault("mfu", None)
    return out


def load_part(root: Path, spike_kw: dict[str, Any]) -> list[dict[str, Any]]:
    """Groups of one part (summarize.group_rows), each run with its throughput fields."""
    runs = []
    for d in S.find_runs(root):
        r = S.load_run(d, root, spike_kw)
        r["_dir"] = str(d)
        r.update(_speed(str(d)))
        runs.append(r)
    runs.sort(key=lambda r: (r["group"], str(r["seed"])))
    return S.group_rows(runs) if runs else []


def aggregate_rate(jobs: Path, runs_root: Path) -> dict[str, Any] | None:
    """Images/s of one call: the samples of the runs its jobs file names, over the span from the first start to the
    last end (a folder merged from several calls gives one jobs file per call)."""
    if not jobs.is_file():
        return None
    rows = list(csv.DictReader(jobs.open(), delimiter="\t"))
    spans = [(float(r["start_s"]), float(r["start_s"]) + float(r["seconds"])) for r in rows
             if not r["status"].startswith("skipped")]
    seen = []
    for r in rows:
        try:
            s = json.loads((runs_root / r["name"] / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if s.get("samples_seen"):
            seen.append(s["samples_seen"])
    if not spans or not seen:
        return None
    span = max(e for _, e in spans) - min(s for s, _ in spans)
    return {"file": jobs.name, "jobs": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
            "skipped": sum(r["status"].startswith("skipped") for r in rows),
            "timeout": sum(r["status"] == "timeout" for r in rows), "seconds": span,
            "samples": int(sum(seen)), "images_per_s": sum(seen) / span if span > 0 else None}


# ---------------------------------------------------------------------------------------------- tables
def _ms(values: list[float | None], scale: float = 1.0, digits: int = 3) -> str:
    v = S.mean_sd(values)
    if v is None:
        return "—"
    m, sd, n = v
    return f"{m * scale:.{digits}f} ± {sd * scale:.{digits}f}" + (f" (n={n})" if n != 2 else "")


def _delta(row: dict[str, Any] | None, key: str, scale: float, digits: int) -> str:
    """Mean paired Δ (seed k vs the baseline's seed k) ± its s.d., then the per-seed values."""
    if row is None or not row[key]["paired"]:
        return "—"
    d = [v * scale for v in row[key]["paired"].values()]
    sd = statistics.stdev(d) if len(d) > 1 else 0.0
    return f"{statistics.fmean(d):+.{digits}f} ± {sd:.{digits}f} ({', '.join(f'{x:+.{digits}f}' for x in d)})"


def _verdict(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    if row["within"] is None:
        return "too few seeds"
    return "within seed noise" if row["within"] else "**outside seed noise**"


def _runs(g: dict[str, Any], key: str) -> list[Any]:
    return [r.get(key) for r in g["_runs"] if r["status"] == "finished"]


def recipe_table(groups: list[dict[str, Any]], baseline: str | None, extra: bool = False) -> list[str]:
    comparison = {c["group"]: c for c in S.compare_to_baseline(groups, baseline)} if baseline and any(
        g["group"] == baseline for g in groups) else {}
    head = ["group", "recipe", "finished", "final loss", f"Δ loss vs {baseline} (per seed)", "zero-shot top-1 %",
            f"Δ top-1 vs {baseline}, pp (per seed)", "verdict (Welch, 5%)"]
    head += ["max abs block output (peak)"] if extra else ["images/s per run", "tokens/s per run", "MFU", "peak GiB"]
    rows = []
    for g in groups:
        c = comparison.get(g["group"])
        row = [g["group"], g["recipe"], f"{g['finished']}/{g['runs']}", _ms(_runs(g, "final_loss"), digits=4),
               _delta(c, "final_loss", 1.0, 4), _ms(_runs(g, "zeroshot_mean"), 100.0, 1),
               _delta(c, "zeroshot_mean", 100.0, 1), _verdict(c)]
        if extra:
            row.append(_ms([r.get("act_max_peak") for r in g["_runs"]], digits=1))
        else:
            mfu = _runs(g, "mfu")
            row += [_ms(_runs(g, "images_per_s"), digits=0), _ms(_runs(g, "tokens_per_s"), digits=0),
                    _ms(mfu, 100.0, 2) + "%" if any(m is not None for m in mfu) else "unknown",
                    _ms(_runs(g, "peak_memory_gb"), digits=1)]
        rows.append(row)
    return [S._md_table(head, rows), ""]


def spike_table(groups: list[dict[str, Any]]) -> list[str]:
    rows = []
    for g in groups:
        lags = [s["lag"] for r in g["_runs"] for s in r["spikes"] if s["lag"] is not None]
        rows.append([g["group"], f"lr {g['lr']}, β2 {g['beta2']}", " / ".join(map(str, g["spikes_per_run"])),
                     f"{g['spikes_with_precursor']}/{g['spikes_total']}" if g["has_rms"] else "no RMS logged",
                     ", ".join(map(str, lags)) or "—", g["first_precursor"] or "—",
                     _ms(_runs(g, "final_loss"), digits=4), _ms(_runs(g, "zeroshot_mean"), 100.0, 1)])
    return [S._md_table(["optimizer", "setting", "loss spikes per run (seeds)", "with an RMS spike 1–8 steps before",
                         "lags (steps)", "most frequent first tensor", "final loss", "zero-shot top-1 %"], rows), ""]


# ---------------------------------------------------------------------------------------------- plots
def _band(runs: list[dict[str, Any]], smooth: int) -> tuple[np.ndarray, ...] | None:
    """Steps, mean, min and max over the runs' smoothed loss curves (each step: the runs that logged it)."""
    curves = [(np.asarray(r["_steps"]), S._smooth(np.asarray(r["_loss"], dtype=float), smooth)) for r in runs
              if len(r["_steps"])]
    if not curves:
        return None
    steps = np.unique(np.concatenate([s for s, _ in curves]))
    grid = np.full((len(curves), len(steps)), np.nan)
    for i, (s, y) in enumerate(curves):
        grid[i, np.searchsorted(steps, s)] = y
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore", RuntimeWarning)
        return steps, np.nanmean(grid, 0), np.nanmin(grid, 0), np.nanmax(grid, 0)


def plot_loss(parts: dict[str, list[dict[str, Any]]], out: Path, smooth: int) -> str | None:
    import matplotlib.pyplot as plt

    shown = [(p, gs) for p, gs in parts.items() if gs]
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(6.5 * len(shown), 4.5), squeeze=False)
    for ax, (part, groups) in zip(axes[0], shown):
        for i, g in enumerate(groups):
            b = _band(g["_runs"], smooth)
            if b is None:
                continue
            steps, mean, lo, hi = b
            ax.plot(steps, mean, color=f"C{i % 10}", lw=1.2, label=f"{g['group']} (n={len(g['_runs'])})")
            ax.fill_between(steps, lo, hi, color=f"C{i % 10}", alpha=0.2, lw=0)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(f"{part}: mean over seeds, band = seed min–max"
                     + (f" (moving average {smooth})" if smooth > 1 else ""), fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=110)
    plt.close(fig)
    return "loss_curves.png"


def plot_zeroshot(parts: dict[str, list[dict[str, Any]]], out: Path) -> str | None:
    import matplotlib.pyplot as plt

    groups = [(p, g) for p, gs in parts.items() for g in gs]
    vals = [[100 * r["zeroshot_mean"] for r in g["_runs"] if r["status"] == "finished" and r.get("zeroshot_mean")
             is not None] for _, g in groups]
    if not any(vals):
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(groups)), 4.5))
    for i, ((part, g), v) in enumerate(zip(groups, vals)):
        color = f"C{list(parts).index(part)}"
        ax.scatter([i] * len(v), v, color=color, s=18, zorder=3)
        if v:
            ax.errorbar([i + 0.18], [statistics.fmean(v)], yerr=[statistics.stdev(v) if len(v) > 1 else 0.0],
                        fmt="s", color=color, capsize=3, ms=4)
        if g["group"] == baseline_of(part):
            ax.axhline(statistics.fmean(v) if v else np.nan, color=color, ls="--", lw=0.8)
    chance = [100 * statistics.fmean(r["chance"].values()) for _, g in groups for r in g["_runs"] if r.get("chance")]
    if chance:
        ax.axhline(statistics.fmean(chance), color="gray", ls=":", lw=1, label="chance")
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(groups)), [f"{p}/{g['group']}" for p, g in groups], rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("zero-shot top-1 on the test split (%)")
    ax.set_title("zero-shot top-1: seeds (dots), mean ± s.d. (squares); dashed: each part's baseline", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "zeroshot.png", dpi=110)
    plt.close(fig)
    return "zeroshot.png"


def plot_spike(groups: list[dict[str, Any]], out: Path) -> str | None:
    """Loss (spikes marked) and the largest per-tensor RMS of every spike run, optimizers in colours."""
    import matplotlib.pyplot as plt

    runs = [(i, g, r) for i, g in enumerate(groups) for r in g["_runs"] if r["_dir"] and len(r["_steps"])]
    if not runs:
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for i, g, r in runs:
        m = S.read_metrics(Path(r["_dir"]) / "metrics.csv")
        label = f"{g['group']} seed {r['seed']}"
        ls = "-" if str(r["seed"]) in ("0", "None") else "--"
        top.plot(m["step"], m["loss"], color=f"C{i}", lw=0.8, ls=ls, label=label)
        for s in r["spikes"]:
            top.axvline(s["step"], color=f"C{i}", lw=0.6, alpha=0.6)
            top.plot([s["step"]], [s["peak"]], "v", color=f"C{i}", ms=6)
        rms = [c for c in m if c.startswith("rms/")]
        if rms:
            with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
                __import__("warnings").simplefilter("ignore", RuntimeWarning)
                mx = np.nanmax(np.stack([m[c] for c in rms], 1), 1)
            bottom.plot(m["step"], mx, color=f"C{i}", lw=0.8, ls=ls, label=label)
    bottom.axhline(S.SPIKE_DEFAULTS["rms_threshold"], color="gray", ls=":", lw=1, label="RMS threshold")
    top.set_ylabel("training loss")
    top.set_title("spike runs: loss (triangles: detected loss spikes) and the largest per-tensor update RMS", fontsize=9)
    bottom.set_ylabel("max RMS over tensors")
    bottom.set_yscale("log")
    bottom.set_xlabel("step")
    top.legend(fontsize=7)
    bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "spike.png", dpi=110)
    plt.close(fig)
    return "spike.png"


# ---------------------------------------------------------------------------------------------- report
def report(root: Path, out: Path, title: str = "Issue 30", jobs: Path | list[Path] | None = None, smooth: int = 10,
           plots: bool = True) -> dict[str, Any]:
    """Read RUNS' parts, write results.md, summary.json, the plots and each part's detailed summary (``jobs``: one
    jobs file per device call whose runs RUNS holds)."""
    spike_kw = dict(S.SPIKE_DEFAULTS)
    parts = {p: load_part(root / p, spike_kw) for p in part_names(root)}
    if not any(parts.values()):
        raise SystemExit(f"no runs under {root}/{{main,ls-lr*,spike}} (experiments/run_paper.sh lays them out)")
    parts.setdefault("main", [])
    parts.setdefault("spike", [])
    out.mkdir(parents=True, exist_ok=True)
    for p in parts:  # put each baseline first
        parts[p].sort(key=lambda g: g["group"] != baseline_of(p))
    pngs = []
    if plots:
        import matplotlib

        matplotlib.use("Agg", force=True)
        pngs = [x for x in (plot_loss({p: g for p, g in parts.items() if p != "spike"}, out, smooth),
                            plot_zeroshot({p: g for p, g in parts.items() if p != "spike"}, out),
                            plot_spike(parts["spike"], out)) if x]
    md = [f"## {title}", "", "Generated by `experiments/summarize_paper.py` from `experiments/run_paper.sh`'s runs. "
          "Mean ± sample s.d. over finished seeds (n = 2 unless shown). Final loss: mean of the last 10 steps. "
          "Zero-shot: top-1 on the held-out test split. Δ: seed k minus the baseline's seed k (same initialisation "
          "and data order), mean ± s.d., then per seed. Verdict: Welch's t-test at 5% on final loss and top-1 "
          "(`experiments/summarize.py`); with 2 seeds it can only rule out large differences.", ""]
    jobs = [jobs] if isinstance(jobs, Path) else list(jobs or [])
    aggs = [a for a in (aggregate_rate(j, root) for j in jobs) if a]
    if parts["main"]:
        md += [f"### Recipes at lr {parts['main'][0]['lr']}", "", *recipe_table(parts["main"], baseline_of("main"))]
        md += ["Images/s, tokens/s and MFU are each run's own while it shared the GPU with the others "
               "(`samples_per_s_steady`; tokens = vision tokens + text context per image): they compare settings "
               "of one call, not recipe speeds (`lowbit bench step` measures those alone).", ""]
    for agg in aggs:
        call = "The call" if len(aggs) == 1 else f"The call of `{agg['file']}`"
        md += [f"{call}: {agg['ok']} of {agg['jobs']} jobs finished ({agg['timeout']} cut by the budget, "
               f"{agg['skipped']} not started); {agg['samples']:,} images trained in {agg['seconds']:.0f} s = "
               f"{agg['images_per_s']:.0f} images/s over its runs together.", ""]
    for p in (p for p in parts if p.startswith("ls") and parts[p]):
        md += [f"### Layer-scale at lr {parts[p][0]['lr']}", "", *recipe_table(parts[p], baseline_of(p), extra=True)]
    if parts["spike"]:
        md += ["### Loss spikes (recipe bf16, RMS monitor on)", "", *spike_table(parts["spike"]),
               f"Spikes: `lowbit.monitor.find_spikes` (z ≥ {spike_kw['z_threshold']}, rise ≥ "
               f"{100 * spike_kw['min_rise']:.0f}% over a {spike_kw['window']}-step window; RMS precursor: RMS > "
               f"{spike_kw['rms_threshold']} {spike_kw['min_lag']}–{spike_kw['max_lag']} steps before).", ""]
    md += [f"![{p}]({p})" for p in pngs] + ["", "Per-seed rows, t-tests and the spike / feature-magnitude tables: "
                                            + ", ".join(f"`{p}/results.md`" for p in parts if parts[p]) + "."]
    (out / "results.md").write_text("\n".join(md) + "\n")
    details = {}
    for p in parts:  # summarize.py's full output per part
        baseline = baseline_of(p)
        if parts[p]:
            has_base = any(g["group"] == baseline for g in parts[p])
            details[p] = S.summarize([root / p], out / p, title=f"{title}: {p}", plots=plots,
                                     baseline=baseline if has_base else None, smooth=smooth)

    def clean(g: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in g.items() if not k.startswith("_")}

    data = {"parts": {p: [clean(g) for g in gs] for p, gs in parts.items()},
            "speed": {p: {g["group"]: [{k: r.get(k) for k in ("seed", "images_per_s", "tokens_per_s", "mfu",
                                                              "peak_memory_gb")} for r in g["_runs"]]
                          for g in gs} for p, gs in parts.items()},
            "aggregate": aggs, "comparison": {p: d.get("comparison") for p, d in details.items()}}
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=lambda x: None if isinstance(
        x, float) and not math.isfinite(x) else str(x)))
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, help="run_paper.sh's RUNS folder (main/, ls/, spike/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--jobs", type=Path, nargs="+", default=None,
                   help="run_paper.sh's jobs.tsv, one per device call, for each call's aggregate images/s")
    p.add_argument("--title", default="Issue 30: the paper's claims on Fashion-MNIST")
    p.add_argument("--smooth", type=int, default=10, help="moving average of the plotted loss curves")
    p.add_argument("--no-plots", action="store_true")
    a = p.parse_args(argv)
    report(a.runs, a.out, a.title, a.jobs, a.smooth, plots=not a.no_plots)
    print((a.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
