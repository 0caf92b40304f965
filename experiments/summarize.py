#!/usr/bin/env python3
"""Summarize ``lowbit train`` run directories into markdown tables and PNG plots (issue #7).

    python experiments/summarize.py OUT/accuracy --out OUT/accuracy/summary
    python experiments/summarize.py OUT/spikes --out docs/results/spikes --title "Loss spikes"

A run directory is any folder holding ``metrics.csv`` or ``summary.json`` (what ``lowbit train --out DIR``
writes). Runs are grouped by their parent folder relative to the root given (the runners lay runs out as
``ROOT/<group>/seed<k>``), so seeds of one setting are aggregated: mean ± sample standard deviation over
seeds, with n. A run without ``summary.json`` (stopped by a non-finite loss, or cut short by a timeout) is
counted as ``incomplete`` and its last logged loss is shown separately; it never enters the means.

Writes to ``--out``: ``results.md`` (all tables), ``summary.json`` (per run and per group),
``loss_curves.png``, and when the runs logged them: ``spike_lags.png`` (histogram of the lag from the first
RMS spike to the loss spike, lowbit.monitor.find_spikes), ``spikes_<group>.png`` (loss + per-tensor RMS of a
run per group, lowbit.monitor.plot_spikes), ``feature_magnitudes.png`` (max |activation| over blocks
along training, from ``act/<block>`` columns).

``--baseline GROUP`` (e.g. ``bf16``) adds a comparison of every other group with that one — final loss and zero-shot
mean: difference of the means, Welch's t and its degrees of freedom, and the verdict *within seed noise* when
|t| ≤ t₀.₉₇₅(ν) (Welch's two-sided t-test at 5%, ν rounded down: conservative), and the per-seed differences (seed
k of two recipes starts from the same initialisation and sees the same data order) — plus ``final_per_seed.png``
(every seed's final loss and zero-shot accuracy per group).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

SPIKE_DEFAULTS = {"window": 20, "min_history": 8, "z_threshold": 6.0, "min_rise": 0.05, "rms_threshold": 2.0,
                  "min_lag": 1, "max_lag": 8}


# ---------------------------------------------------------------------------------------------- reading
def find_runs(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) holding ``metrics.csv`` or a run's ``summary.json``, sorted.

    A summary written by this script (it has ``groups``, and no metrics) is an output, not a run."""
    found = {p.parent for p in root.rglob("metrics.csv")}
    found |= {p.parent for p in root.rglob("summary.json") if not _is_summary_output(p)}
    return sorted(found)


def _is_summary_output(path: Path) -> bool:
    try:
        return "groups" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def _f(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    """Columns of a metrics CSV as float arrays (empty cells NaN)."""
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    cols = list(rows[0].keys())
    return {c: np.array([_f(r.get(c)) for r in rows], dtype=np.float64) for c in cols}


def _config(run: Path) -> dict[str, Any]:
    for name in ("summary.json",):
        p = run / name
        if p.is_file():
            try:
                return json.loads(p.read_text()).get("config", {}) or {}
            except json.JSONDecodeError:
                pass
    p = run / "config.yaml"
    if p.is_file():
        import yaml

        return yaml.safe_load(p.read_text()) or {}
    return {}


def load_run(run: Path, root: Path, spike_kw: dict[str, Any]) -> dict[str, Any]:
    """One run's numbers: final loss, zero-shot, status, spikes, feature magnitudes."""
    rel = run.relative_to(root) if run != root else Path(run.name)
    group = str(rel.parent) if str(rel.parent) != "." else rel.name
    summary = None
    if (run / "summary.json").is_file():
        try:
            summary = json.loads((run / "summary.json").read_text())
        except json.JSONDecodeError:
            summary = None
    cfg = (summary or {}).get("config") or _config(run)
    mcfg = (summary or {}).get("model_config") or {}
    m = read_metrics(run / "metrics.csv")
    steps = m.get("step", np.array([]))
    loss = m.get("loss", np.array([]))
    last_step = int(np.nanmax(steps)) if len(steps) else 0
    out: dict[str, Any] = {
        "run": str(rel), "group": group, "seed": cfg.get("seed"), "recipe": cfg.get("recipe"),
        "optimizer": cfg.get("optimizer"), "lr": cfg.get("lr"), "beta2": cfg.get("beta2"),
        "grad_clip": cfg.get("grad_clip"), "batch_size": cfg.get("batch_size"),
        "layer_scale_init": (cfg.get("model") or {}).get("layer_scale_init", mcfg.get("layer_scale_init")),
        "width": ((mcfg.get("vision") or {}).get("width")) or ((cfg.get("model") or {}).get("vision") or {}).get("width"),
        "steps_planned": cfg.get("steps"), "last_step": last_step,
    }
    finite = loss[np.isfinite(loss)] if len(loss) else loss
    out["last_loss"] = float(finite[-1]) if len(finite) else None
    out["nonfinite_loss"] = bool(len(loss) and not np.isfinite(loss).all())
    if summary is not None and summary.get("status") == "finished":
        out["status"] = "finished"
        out["final_loss"] = summary.get("final_loss_avg10", summary.get("final_loss"))
        out["zeroshot_mean"] = summary.get("zeroshot_mean")
        out["zeroshot"] = summary.get("zeroshot") or {}
        out["chance"] = summary.get("chance") or {}
        out["samples_per_s"] = summary.get("samples_per_s")
        out["train_seconds"] = summary.get("train_seconds")
        out["device"] = summary.get("device")
    else:
        out["status"] = "incomplete" if summary is None else str(summary.get("status"))
        out["zeroshot"] = {}
    # loss spikes and their RMS precursors (when the RMS monitor was on)
    rms_cols = [c for c in m if c.startswith("rms/")]
    out["has_rms"] = bool(rms_cols)
    if len(steps) >= 2 and np.isfinite(loss).sum() >= 2:
        from lowbit.monitor import find_spikes

        has_loss = np.isfinite(loss)
        rms = np.stack([m[c] for c in rms_cols], axis=1) if rms_cols else np.zeros((len(steps), 0))
        has_rms = np.isfinite(rms).any(axis=1) if rms_cols else np.zeros(len(steps), dtype=bool)
        spikes = find_spikes(steps[has_loss].astype(np.int64), loss[has_loss], steps[has_rms].astype(np.int64),
                             rms[has_rms], [c[4:] for c in rms_cols], **spike_kw)
        out["spikes"] = [{"step": s.step, "peak": s.peak, "baseline": s.baseline,
                          "first": s.first.name if s.first else None, "lag": s.first.lag if s.first else None,
                          "lags": [p.lag for p in s.precursors]} for s in spikes]
    else:
        out["spikes"] = []
    # feature magnitudes: max over blocks of act/<block> (block outputs, not branches)
    act_cols = [c for c in m if c.startswith("act/") and not c.endswith("_branch")]
    if act_cols:
        a = np.stack([m[c] for c in act_cols], axis=1)
        with np.errstate(all="ignore"):
            amax = np.where(np.isnan(a).all(axis=1), np.nan, np.nanmax(np.where(np.isnan(a), -np.inf, a), axis=1))
        out["act_steps"] = steps.tolist()
        out["act_max"] = amax.tolist()
        fin = amax[np.isfinite(amax)]
        out["act_max_final"] = float(fin[-1]) if len(fin) else None
        out["act_max_peak"] = float(fin.max()) if len(fin) else None
        per_block = {c[4:]: float(np.nanmax(m[c])) for c in act_cols if np.isfinite(m[c]).any()}
        out["act_peak_block"] = max(per_block, key=per_block.get) if per_block else None
    out["_steps"], out["_loss"] = steps, loss
    # the loss curve, every step up to 400 points, so a later summary can merge this run without its directory
    keep = slice(None, None, max(1, -(-len(steps) // 400)))
    out["loss_curve"] = [[int(a), float(b) if np.isfinite(b) else None] for a, b in zip(steps[keep], loss[keep])]
    return out


def load_earlier(path: Path, only: list[str] | None = None) -> list[dict[str, Any]]:
    """Runs from an earlier ``summary.json`` (whose run directories were not kept), for one table over device
    calls. ``only``: glob patterns on the run name (``w768-*/seed0``). A loss curve is restored when stored."""
    data = json.loads(Path(path).read_text())
    runs = []
    for r in data.get("runs", []):
        if only and not any(fnmatch.fnmatch(r["run"], pat) for pat in only):
            continue
        curve = np.array([[a, np.nan if b is None else b] for a, b in r.get("loss_curve") or []], dtype=float)
        r = {**r, "source": str(path), "_dir": None}
        r["_steps"], r["_loss"] = (curve[:, 0], curve[:, 1]) if len(curve) else (np.array([]), np.array([]))
        runs.append(r)
    return runs


# ---------------------------------------------------------------------------------------------- aggregation
def mean_sd(values: list[float | None]) -> tuple[float, float, int] | None:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return None
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


def fmt_ms(ms: tuple[float, float, int] | None, scale: float = 1.0, digits: int = 3, unit: str = "") -> str:
    if ms is None:
        return "—"
    m, s, n = ms
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}{unit} (n={n})"


# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (no scipy needed); 2.0 above 30 (≥ t(60))
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: float) -> float:
    """t₀.₉₇₅ at ``df`` rounded down (conservative for Welch's fractional degrees of freedom)."""
    k = max(1, math.floor(df + 1e-9))
    return T975[k - 1] if k <= len(T975) else 2.0


def welch(a: list[float], b: list[float]) -> dict[str, Any] | None:
    """Welch's t-test of mean(a) − mean(b): ``diff``, ``se``, ``t``, ``df``, ``t_crit`` and ``within`` (|t| ≤ t_crit,
    i.e. not significant at 5% two-sided). None with fewer than 2 values on either side."""
    a = [float(x) for x in a if x is not None and math.isfinite(float(x))]
    b = [float(x) for x in b if x is not None and math.isfinite(float(x))]
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return {"diff": diff, "se": 0.0, "t": 0.0 if diff == 0 else math.copysign(math.inf, diff),
                "df": float(len(a) + len(b) - 2), "t_crit": t975(len(a) + len(b) - 2), "within": diff == 0}
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = diff / se
    return {"diff": diff, "se": se, "t": t, "df": df, "t_crit": t975(df), "within": abs(t) <= t975(df)}


METRICS = (("final_loss", "final loss", 1.0, 4, ""), ("zeroshot_mean", "zero-shot top-1", 100.0, 1, " pp"))


def compare_to_baseline(groups: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Every group against ``baseline`` on each metric of METRICS (finished runs only)."""
    base = next((g for g in groups if g["group"] == baseline), None)
    if base is None:
        raise SystemExit(f"--baseline {baseline!r}: no such group (groups: {', '.join(g['group'] for g in groups)})")

    def values(g: dict[str, Any], key: str) -> dict[Any, float]:
        return {r["seed"]: r[key] for r in g["_runs"] if r["status"] == "finished" and r.get(key) is not None}

    rows = []
    for g in groups:
        if g is base:
            continue
        row: dict[str, Any] = {"group": g["group"], "baseline": baseline}
        for key, *_ in METRICS:
            mine, theirs = values(g, key), values(base, key)
            paired = {s: mine[s] - theirs[s] for s in sorted(mine, key=str) if s in theirs}
            row[key] = {"test": welch(list(mine.values()), list(theirs.values())), "paired": paired,
                        "n": len(mine), "n_baseline": len(theirs)}
        tests = [row[key]["test"] for key, *_ in METRICS]
        row["within"] = None if any(t is None for t in tests) else all(t["within"] for t in tests)
        rows.append(row)
    return rows


def group_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for g, rs in groups.items():
        done = [r for r in rs if r["status"] == "finished"]
        inc = [r for r in rs if r["status"] != "finished"]
        spikes = [len(r["spikes"]) for r in rs if r["last_step"]]
        lags = [s["lag"] for r in rs for s in r["spikes"] if s["lag"] is not None]
        n_sp = sum(spikes)
        firsts = Counter(s["first"] for r in rs for s in r["spikes"] if s["first"])
        first = rs[0]
        out.append({
            "group": g, "recipe": first["recipe"], "optimizer": first["optimizer"], "width": first["width"],
            "layer_scale_init": first["layer_scale_init"], "beta2": first["beta2"], "grad_clip": first["grad_clip"],
            "lr": first["lr"], "runs": len(rs), "finished": len(done),
            "incomplete": [f"{Path(r['run']).name}@{r['last_step']}/{r['steps_planned']}"
                           + (" (non-finite loss)" if r["nonfinite_loss"] else "") for r in inc],
            "final_loss": mean_sd([r.get("final_loss") for r in done]),
            "zeroshot_mean": mean_sd([r.get("zeroshot_mean") for r in done]),
            "zeroshot_tasks": {t: mean_sd([r["zeroshot"].get(t) for r in done])
                               for t in sorted({t for r in done for t in r["zeroshot"]})},
            "chance_mean": mean_sd([statistics.fmean(r["chance"].values()) for r in done if r.get("chance")]),
            "samples_per_s": mean_sd([r.get("samples_per_s") for r in done]),
            "spikes_per_run": spikes, "spikes_total": n_sp,
            "spikes_with_precursor": sum(1 for r in rs for s in r["spikes"] if s["first"]),
            "median_lag": statistics.median(lags) if lags else None,
            "first_precursor": firsts.most_common(1)[0][0] if firsts else None,
            "has_rms": any(r["has_rms"] for r in rs),
            "act_max_final": mean_sd([r.get("act_max_final") for r in rs]),
            "act_max_peak": mean_sd([r.get("act_max_peak") for r in rs]),
            "act_peak_block": Counter(r.get("act_peak_block") for r in rs if r.get("act_peak_block")).most_common(1),
            "_runs": rs,
        })
    return out


# ---------------------------------------------------------------------------------------------- output
def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("—" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _setting(g: dict[str, Any]) -> str:
    parts = []
    if g["width"]:
        parts.append(f"width {g['width']}")
    if g["layer_scale_init"] is not None:
        parts.append(f"layer-scale {g['layer_scale_init']}")
    if g["optimizer"]:
        parts.append(f"{g['optimizer']} β2 {g['beta2']}" + (f" clip {g['grad_clip']}" if g["grad_clip"] else ""))
    return ", ".join(parts)


def _comparison_md(rows: list[dict[str, Any]], groups: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    baseline = rows[0]["baseline"]
    byname = {g["group"]: g for g in groups}
    md = [f"Against `{baseline}` (seed noise: Welch's t-test, two-sided at 5%: *within seed noise* when |t| ≤ "
          "t₀.₉₇₅(ν), ν = Welch's degrees of freedom rounded down; Δ = group − baseline; per seed: the paired "
          "differences, same initialisation and data order):", ""]
    for key, label, scale, digits, unit in METRICS:
        trows = []
        for r in rows:
            c, test = r[key], r[key]["test"]
            paired = ", ".join(f"{v * scale:+.{digits}f}" for v in c["paired"].values()) or "—"
            if test is None:
                trows.append([r["group"], fmt_ms(byname[r["group"]][key], scale, digits),
                              fmt_ms(byname[baseline][key], scale, digits), "—", "—", "—",
                              f"n too small ({c['n']} vs {c['n_baseline']})", paired])
                continue
            trows.append([r["group"], fmt_ms(byname[r["group"]][key], scale, digits),
                          fmt_ms(byname[baseline][key], scale, digits), f"{test['diff'] * scale:+.{digits}f}{unit}",
                          f"{test['t']:+.2f} (ν {test['df']:.1f})", f"{test['t_crit']:.2f}",
                          "within seed noise" if test["within"] else "**outside seed noise**", paired])
        md += [f"{label[0].upper()}{label[1:]}:", "",
               _md_table(["group", label, baseline, "Δ", "Welch t (ν)", "t₀.₉₇₅", "verdict", "Δ per seed"], trows),
               ""]
    verdicts = []
    for r in rows:
        if r["within"] is None:
            verdicts.append(f"`{r['group']}`: not enough finished seeds to say")
            continue
        parts = []
        for key, label, scale, digits, unit in METRICS:
            t = r[key]["test"]
            parts.append(f"{label} Δ {t['diff'] * scale:+.{digits}f}{unit}, |t| {abs(t['t']):.2f} "
                         f"{'≤' if t['within'] else '>'} {t['t_crit']:.2f}")
        verdicts.append(f"`{r['group']}`: {'within' if r['within'] else '**not** within'} seed noise of "
                        f"`{baseline}` ({'; '.join(parts)})")
    md += ["Verdicts:", ""] + [f"- {v}" for v in verdicts] + [""]
    return md


def write_markdown(groups: list[dict[str, Any]], out: Path, title: str, pngs: list[str], spike_kw: dict,
                   comparison: list[dict[str, Any]] | None = None) -> str:
    md = [f"## {title}", "",
          "Generated by `experiments/summarize.py` from the run directories; mean ± sample s.d. over seeds (n = "
          "finished runs). Final loss: mean of the last 10 steps. Zero-shot: top-1 mean over the tasks.", ""]
    rows = []
    for g in groups:
        rows.append([g["group"], g["recipe"], _setting(g), f"{g['finished']}/{g['runs']}",
                     fmt_ms(g["final_loss"], digits=4), fmt_ms(g["zeroshot_mean"], 100, 1, "%"),
                     ", ".join(g["incomplete"]) or ""])
    md += [_md_table(["group", "recipe", "setting", "finished", "final loss", "zero-shot mean", "incomplete runs"],
                     rows), ""]
    def _seed_cell(r: dict[str, Any]) -> str:
        done = r["status"] == "finished" and r.get("final_loss") is not None and r.get("zeroshot_mean") is not None
        value = f"{r['final_loss']:.3f} / {100 * r['zeroshot_mean']:.1f}%" if done else r["status"]
        return f"seed {r['seed']}: {value}"

    prows = [[g["group"], "; ".join(_seed_cell(r) for r in g["_runs"])] for g in groups]
    md += ["Per seed (final loss / zero-shot mean), for paired comparisons:", "",
           _md_table(["group", "runs"], prows), ""]
    md += _comparison_md(comparison or [], groups)
    earlier = sorted({(r["source"], r["run"]) for g in groups for r in g["_runs"] if r.get("source")})
    if earlier:
        srcs = sorted({s for s, _ in earlier})
        md += [f"Runs taken from earlier summaries ({', '.join(f'`{s}`' for s in srcs)}; their directories were not "
               f"kept, so a curve is plotted only where one was stored): "
               + ", ".join(f"`{r}`" for _, r in earlier) + ".", ""]
    tasks = sorted({t for g in groups for t in g["zeroshot_tasks"]})
    if tasks:
        trows = [[g["group"]] + [fmt_ms(g["zeroshot_tasks"].get(t), 100, 1).split(" (")[0] for t in tasks]
                 for g in groups]
        md += ["Zero-shot top-1 per task (%, mean ± s.d.):", "", _md_table(["group", *tasks], trows), ""]
    if any(g["has_rms"] or g["spikes_total"] for g in groups):
        srows = [[g["group"], _setting(g), " / ".join(map(str, g["spikes_per_run"])), g["spikes_total"],
                  f"{g['spikes_with_precursor']}/{g['spikes_total']}" if g["has_rms"] else "no RMS logged",
                  g["median_lag"], g["first_precursor"]] for g in groups]
        md += [f"Loss spikes (lowbit.monitor.find_spikes: z ≥ {spike_kw['z_threshold']}, rise ≥ "
               f"{100 * spike_kw['min_rise']:.0f}% over a {spike_kw['window']}-step window; RMS precursor: RMS > "
               f"{spike_kw['rms_threshold']} {spike_kw['min_lag']}–{spike_kw['max_lag']} steps before):", "",
               _md_table(["group", "setting", "spikes per run (seeds)", "total", "with RMS precursor",
                          "median lag", "most frequent first tensor"], srows), ""]
    if any(g["act_max_peak"] for g in groups):
        arows = [[g["group"], g["recipe"], _setting(g), fmt_ms(g["act_max_final"], digits=1),
                  fmt_ms(g["act_max_peak"], digits=1), g["act_peak_block"][0][0] if g["act_peak_block"] else None]
                 for g in groups]
        md += ["Feature magnitudes (max |activation| over the blocks' outputs, `act/<block>` columns):", "",
               _md_table(["group", "recipe", "setting", "at the end", "peak during training", "block with the peak"],
                         arows), ""]
    md += [f"![{p}]({p})" for p in pngs]
    text = "\n".join(md) + "\n"
    (out / "results.md").write_text(text)
    return text


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (NaNs ignored; the first points average what there is)."""
    if window <= 1 or len(y) == 0:
        return y
    ok = np.isfinite(y)
    c = np.concatenate([[0.0], np.cumsum(np.where(ok, y, 0.0))])
    n = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(1, len(y) + 1)
    lo = np.maximum(0, i - window)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n[i] - n[lo] > 0, (c[i] - c[lo]) / (n[i] - n[lo]), np.nan)


def plot_per_seed(groups: list[dict[str, Any]], out: Path, baseline: str | None) -> str | None:
    """``final_per_seed.png``: each seed's final loss and zero-shot top-1 per group, mean ± s.d. beside them."""
    import matplotlib.pyplot as plt

    done = [[r for r in g["_runs"] if r["status"] == "finished"] for g in groups]
    if not any(done):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (key, label, scale, _digits, _unit) in zip(axes, METRICS):
        for i, (g, runs) in enumerate(zip(groups, done)):
            vals = [r[key] * scale for r in runs if r.get(key) is not None]
            if not vals:
                continue
            ax.scatter([i - 0.08] * len(vals), vals, color=f"C{i % 10}", zorder=3, s=22)
            for r in runs:
                if r.get(key) is not None:
                    ax.annotate(str(r["seed"]), (i - 0.08, r[key] * scale), xytext=(-9, -3),
                                textcoords="offset points", fontsize=7, color="gray")
            m = statistics.fmean(vals)
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            ax.errorbar([i + 0.12], [m], yerr=[sd], fmt="s", color=f"C{i % 10}", capsize=4, ms=5)
            if g["group"] == baseline:
                ax.axhline(m, color=f"C{i % 10}", ls="--", lw=0.8, alpha=0.7)
        if key == "zeroshot_mean":
            chance = [statistics.fmean(r["chance"].values()) for runs in done for r in runs if r.get("chance")]
            if chance:
                ax.axhline(100 * statistics.fmean(chance), color="gray", ls=":", lw=1, label="chance")
                ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(range(len(groups)), [g["group"] for g in groups], rotation=20, fontsize=8)
        ax.set_ylabel(label + (" (%)" if scale == 100.0 else ""))
        ax.set_title(f"{label}: seeds (dots) and mean ± s.d." + (f"; dashed: {baseline}" if baseline else ""),
                     fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "final_per_seed.png", dpi=110)
    plt.close(fig)
    return "final_per_seed.png"


def plot_all(groups: list[dict[str, Any]], out: Path, spike_kw: dict, per_group_spike_plots: bool = True,
             smooth: int = 1, baseline: str | None = None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    pngs = []
    # loss curves: one colour per group, one line per seed
    fig, ax = plt.subplots(figsize=(10, 5))
    cmap = plt.get_cmap("tab20")
    for i, g in enumerate(groups):
        drawn = [r for r in g["_runs"] if len(r["_steps"])]  # earlier runs may have no stored curve
        for j, r in enumerate(drawn):
            ax.plot(r["_steps"], _smooth(r["_loss"], smooth), color=cmap(i % 20), lw=0.8, alpha=0.85,
                    label=f"{g['group']} ({len(drawn)} of {len(g['_runs'])})" if j == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("training loss (every seed)" + (f", moving average over {smooth} logged steps" if smooth > 1 else ""))
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=110)
    plt.close(fig)
    pngs.append("loss_curves.png")
    if baseline is not None:
        png = plot_per_seed(groups, out, baseline)
        if png:
            pngs.append(png)
    # lag histogram
    lags = [s["lag"] for g in groups for r in g["_runs"] for s in r["spikes"] if s["lag"] is not None]
    if any(g["has_rms"] for g in groups):
        fig, ax = plt.subplots(figsize=(6, 4))
        bins = np.arange(spike_kw["min_lag"] - 0.5, spike_kw["max_lag"] + 1.5)
        ax.hist(lags, bins=bins, color="tab:blue", edgecolor="black")
        n_sp = sum(len(r["spikes"]) for g in groups for r in g["_runs"])
        ax.set_xlabel("lag (steps from the first RMS spike to the loss spike)")
        ax.set_ylabel("loss spikes")
        ax.set_title(f"{len(lags)} of {n_sp} loss spikes had an RMS precursor")
        fig.tight_layout()
        fig.savefig(out / "spike_lags.png", dpi=110)
        plt.close(fig)
        pngs.append("spike_lags.png")
        if per_group_spike_plots:
            from lowbit.monitor import plot_spikes

            for g in groups:
                # the seed with the most spikes, so the plot shows what the table counts
                r = max(g["_runs"], key=lambda r: len(r["spikes"]))
                if r["has_rms"] and r["_dir"]:
                    name = f"spikes_{g['group'].replace('/', '_')}.png"
                    kw = {k: v for k, v in spike_kw.items() if k != "rms_threshold"}
                    plot_spikes(Path(r["_dir"]), out / name,
                                rms_threshold=spike_kw["rms_threshold"], **kw)
                    pngs.append(name)
    # feature magnitudes
    if any(r.get("act_max") for g in groups for r in g["_runs"]):
        fig, ax = plt.subplots(figsize=(10, 5))
        for i, g in enumerate(groups):
            for j, r in enumerate(g["_runs"]):
                if r.get("act_max"):
                    ax.plot(r["act_steps"], r["act_max"], color=cmap(i % 20), lw=0.9,
                            label=g["group"] if j == 0 else None)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("max |activation| over blocks")
        ax.legend(fontsize=7, ncol=2)
        ax.set_title("feature magnitudes along training")
        fig.tight_layout()
        fig.savefig(out / "feature_magnitudes.png", dpi=110)
        plt.close(fig)
        pngs.append("feature_magnitudes.png")
    return pngs


def summarize(roots: list[Path], out: Path, title: str = "Results", spike_kw: dict | None = None,
              plots: bool = True, earlier: list[Path] | None = None,
              earlier_only: list[str] | None = None, baseline: str | None = None, smooth: int = 1) -> dict[str, Any]:
    """Read every run under ``roots``, write ``results.md``, ``summary.json`` and PNGs to ``out``.

    ``earlier``: summary.json files of earlier calls whose runs join the table (``earlier_only`` filters them by
    run name); a run under ``roots`` replaces an earlier one of the same name (same group and seed). ``baseline``:
    a group every other is compared with (``compare_to_baseline``); ``smooth``: moving-average window of the plotted
    loss curves (logged points)."""
    spike_kw = {**SPIKE_DEFAULTS, **(spike_kw or {})}
    runs = []
    for root in roots:
        for d in find_runs(root):
            r = load_run(d, root, spike_kw)
            r["_dir"] = str(d)
            runs.append(r)
    names = {r["run"] for r in runs}
    for path in earlier or []:
        runs += [r for r in load_earlier(path, earlier_only) if r["run"] not in names]
    runs.sort(key=lambda r: (r["group"], str(r["seed"])))
    if not runs:
        raise SystemExit(f"no run directories (metrics.csv / summary.json) under {', '.join(map(str, roots))}")
    out.mkdir(parents=True, exist_ok=True)
    groups = group_rows(runs)
    if baseline is not None:  # the baseline first, in tables and plots
        groups.sort(key=lambda g: g["group"] != baseline)
    comparison = compare_to_baseline(groups, baseline) if baseline is not None else None
    pngs = plot_all(groups, out, spike_kw, smooth=smooth, baseline=baseline) if plots else []
    text = write_markdown(groups, out, title, pngs, spike_kw, comparison)

    def clean(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if not k.startswith("_")}

    data = {"groups": [clean(g) for g in groups], "runs": [clean(r) for r in runs], "spike_params": spike_kw}
    if comparison is not None:
        data["comparison"] = comparison
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=str))
    print(text)
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("roots", nargs="+", type=Path, help="folders holding run directories")
    p.add_argument("--out", type=Path, required=True, help="where results.md, summary.json and the PNGs go")
    p.add_argument("--title", default="Results")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--earlier", type=Path, action="append", default=[],
                   help="an earlier summary.json whose runs join the table (repeatable; runs under ROOTS win)")
    p.add_argument("--earlier-only", action="append", default=None, metavar="GLOB",
                   help="take only the earlier runs whose name matches (repeatable), e.g. 'w768-*/seed0'")
    p.add_argument("--baseline", default=None, metavar="GROUP",
                   help="compare every other group with this one (Welch's t-test; e.g. bf16)")
    p.add_argument("--smooth", type=int, default=1, help="moving-average window of the plotted loss curves")
    for k, v in SPIKE_DEFAULTS.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v, help=f"spike detection (default {v})")
    a = p.parse_args(argv)
    summarize(a.roots, a.out, a.title, {k: getattr(a, k) for k in SPIKE_DEFAULTS}, plots=not a.no_plots,
              earlier=a.earlier, earlier_only=a.earlier_only, baseline=a.baseline, smooth=a.smooth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
