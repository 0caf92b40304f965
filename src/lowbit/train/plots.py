"""PNG plots of a run directory (``lowbit plot RUN_DIR``): loss, learning rate, zero-shot accuracy, RMS,
block activations.

Reads ``metrics.csv`` and ``eval.csv`` (see ``lowbit.train.metrics``); uses matplotlib's Agg backend.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

__all__ = ["plot_run"]


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict[str, str]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key, "")
        if v not in ("", None):
            xs.append(int(float(r["step"])))
            ys.append(float(v))
    return xs, ys


def _ema(ys: list[float], alpha: float) -> list[float]:
    """Bias-corrected exponential moving average (non-finite values are skipped)."""
    out, m, n = [], 0.0, 0
    for y in ys:
        if math.isfinite(y):
            m, n = alpha * m + (1 - alpha) * y, n + 1
        out.append(m / (1 - alpha**n) if n else y)
    return out


def integer_steps(ax) -> None:
    """Step axes get whole-number ticks (a 5-step run otherwise shows 0.5, 1.0, 1.5, ...)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None, top_rms: int = 8) -> list[Path]:
    """Write ``loss.png``, ``lr.png``, ``zeroshot.png`` (if evaluated: a curve per task, or bars when there was one
    evaluation), ``rms.png`` + ``rms_heatmap.png`` (if
    monitored: ``--monitor``) and ``activations.png`` (``--activations``) to ``out_dir`` (default
    ``RUN_DIR/plots``); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    metrics = _read(run / "metrics.csv")
    if not metrics:
        raise ValueError(f"no metrics.csv with rows in {str(run)!r}: is it a lowbit run directory?")
    out = Path(out_dir) if out_dir else run / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: plt.Figure, name: str, step_axes: bool = True) -> None:
        if step_axes:
            for ax in fig.axes:
                if ax.get_xlabel() == "step":
                    integer_steps(ax)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)

    steps, loss = _column(metrics, "loss")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, lw=0.8, alpha=0.4, label="loss")
    ax.plot(steps, _ema(loss, 0.9), lw=1.5, label="loss (EMA 0.9)")
    ax.set(xlabel="step", ylabel="contrastive loss", title=f"training loss: {run.name}")
    ax.legend()
    save(fig, "loss.png")

    steps, lr = _column(metrics, "lr")
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(steps, lr)
    ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
    save(fig, "lr.png")

    evals = _read(run / "eval.csv")
    if evals:
        by_task: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
        for r in evals:
            by_task[r["task"]].append((int(float(r["step"])), float(r["top1"]), float(r["chance"])))
        fig, ax = plt.subplots(figsize=(7, 4))
        if max(len(pts) for pts in by_task.values()) == 1:  # one evaluation (the default: at the end): bars, not dots
            tasks = list(by_task)
            ax.bar(range(len(tasks)), [100 * by_task[t][0][1] for t in tasks], label="top-1")
            ax.hlines([100 * by_task[t][0][2] for t in tasks], [i - 0.4 for i in range(len(tasks))],
                      [i + 0.4 for i in range(len(tasks))], colors="k", linestyles=":", label="chance")
            ax.set_xticks(range(len(tasks)), tasks, rotation=30 if len(tasks) > 3 else 0, ha="right" if len(tasks) > 3 else "center")
            step = by_task[tasks[0]][0][0]
            ax.set(ylabel="top-1 (%)", ylim=(0, 100),
                   title=f"zero-shot accuracy at step {step} (one evaluation; --eval-every N for a curve)")
        else:
            for task, pts in by_task.items():
                (line,) = ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=task)
                ax.axhline(100 * pts[0][2], color=line.get_color(), ls=":", lw=1)
            ax.set(xlabel="step", ylabel="top-1 (%)", title="zero-shot accuracy (dotted: chance)", ylim=(0, 100))
        ax.legend(fontsize="small")
        save(fig, "zeroshot.png")

    rms_keys = [k for k in metrics[0] if k.startswith("rms/")]
    if rms_keys:
        series = {k[4:]: _column(metrics, k) for k in rms_keys}
        peak = sorted(series, key=lambda k: -max(series[k][1], default=0.0))[:top_rms]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for name in peak:
            ax.plot(*series[name], lw=1, label=name)
        ax.set(xlabel="step", ylabel="RMS", yscale="log", title=f"RMS per parameter (top {len(peak)} by peak)")
        ax.legend(fontsize="x-small")
        save(fig, "rms.png")

        import numpy as np

        names = list(series)
        all_steps = sorted({x for xs, _ in series.values() for x in xs})
        col = {x: j for j, x in enumerate(all_steps)}
        grid = np.full((len(names), len(all_steps)), np.nan)
        for i, name in enumerate(names):
            for x, y in zip(*series[name]):
                grid[i, col[x]] = y
        # one named row per parameter: 0.11 inch a row keeps 5-pt names legible (ViT-B: ~300 rows, 33 inches)
        fig, ax = plt.subplots(figsize=(11, max(3.0, 0.11 * len(names) + 1.2)))
        lo, hi = (all_steps[0], all_steps[-1]) if all_steps else (0, 1)
        half = 0.5 * (hi - lo) / max(len(all_steps) - 1, 1)
        im = ax.imshow(np.log10(np.clip(grid, 1e-3, None)), aspect="auto", interpolation="nearest", cmap="magma",
                       extent=(lo - half, hi + half, len(names) - 0.5, -0.5))
        ax.set(xlabel="step", title="log10 RMS per parameter (rows in model order)")
        ax.set_yticks(range(len(names)), names, fontsize=5)
        fig.colorbar(im, ax=ax, label="log10 RMS", fraction=0.03, pad=0.01)
        save(fig, "rms_heatmap.png")

    act_keys = [k for k in metrics[0] if k.startswith("act/")]
    if act_keys:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        towers = sorted({k[4:].split(".blocks.")[0] for k in act_keys})
        styles = dict(zip(towers, ("-", "--", ":", "-.")))
        cmap = plt.get_cmap("viridis")
        for tower in towers:
            keys = [k for k in act_keys if k[4:].split(".blocks.")[0] == tower]
            for i, key in enumerate(keys):
                colour = cmap(i / max(len(keys) - 1, 1))
                named = len(keys) <= 8 or i in (0, len(keys) - 1)  # deep towers: name the first and last block
                ax.plot(*_column(metrics, key), lw=1, ls=styles.get(tower, "-"), color=colour,
                        label=key[4:] if named else None)
        ax.set(xlabel="step", ylabel="max |block output|", yscale="log",
               title="largest activation per transformer block (--activations; colour: depth)")
        from matplotlib.ticker import FuncFormatter

        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 4, not 4x10^0
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.tick_params(axis="y", which="minor", labelsize="x-small")
        ax.legend(fontsize="x-small")
        save(fig, "activations.png")
    return written
