"""``plot_spikes``: the loss curve with the per-layer RMS beneath it, from a run's ``metrics.csv``."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.monitor.spikes import find_spikes

__all__ = ["plot_spikes", "read_metrics_csv"]


def _float(x: str | None) -> float:
    if x is None or x.strip() == "":
        return math.nan
    try:
        return float(x)
    except ValueError:
        return math.nan


def read_metrics_csv(path: str | Path) -> dict[str, Any]:
    """Parse a metrics CSV into ``steps`` [T], ``loss`` [T], ``rms`` [T, P], ``names`` (NaN = empty cell).

    Contract with the trainer: one row per logged step, a ``step`` column, a ``loss`` column and one
    ``rms/<parameter name>`` column per tensor; other columns are ignored, empty cells are allowed.
    """
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if "step" not in header:
            raise ValueError(f"{path}: no 'step' column (columns: {header})")
        rms_cols = [c for c in header if c.startswith("rms/")]
        steps, loss, rms = [], [], []
        for row in reader:
            s = _float(row.get("step"))
            if not math.isfinite(s):
                continue
            steps.append(int(s))
            loss.append(_float(row.get("loss")))
            rms.append([_float(row.get(c)) for c in rms_cols])
    return {
        "steps": np.asarray(steps, dtype=np.int64),
        "loss": np.asarray(loss, dtype=np.float64),
        "rms": np.asarray(rms, dtype=np.float64).reshape(len(steps), len(rms_cols)),
        "names": [c[len("rms/") :] for c in rms_cols],
    }


def plot_spikes(
    run_dir: str | Path,
    out_png: str | Path | None = None,
    *,
    top_k: int = 6,
    rms_threshold: float = 2.0,
    **spike_kwargs: Any,
) -> Path:
    """Draw ``RUN_DIR/metrics.csv``: loss on top (detected spikes marked), per-layer RMS beneath.

    The ``top_k`` tensors with the largest peak RMS are drawn in colour with a legend, the others in thin
    grey; a dotted line, labelled, marks ``rms_threshold``. Spikes are found with :func:`lowbit.monitor.find_spikes`
    (``spike_kwargs`` go to it). Writes a PNG (matplotlib Agg) to ``out_png`` (default
    ``RUN_DIR/spikes.png``) and returns its path.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    csv_path = run_dir / "metrics.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"no metrics.csv in {run_dir}")
    out = Path(out_png) if out_png is not None else run_dir / "spikes.png"
    data = read_metrics_csv(csv_path)
    steps, loss, rms, names = data["steps"], data["loss"], data["rms"], data["names"]
    has_loss = np.isfinite(loss)
    has_rms = np.isfinite(rms).any(axis=1) if rms.size else np.zeros(len(steps), dtype=bool)
    spikes = []
    if has_loss.sum() >= 2:
        spikes = find_spikes(
            steps[has_loss],
            loss[has_loss],
            steps[has_rms],
            rms[has_rms],
            names,
            rms_threshold=rms_threshold,
            **spike_kwargs,
        )

    n_rows = 2 if names else 1
    fig, axes = plt.subplots(n_rows, 1, sharex=True, figsize=(11, 3.2 * n_rows + 0.6), squeeze=False)
    ax = axes[0, 0]
    ax.plot(steps[has_loss], loss[has_loss], color="black", lw=1.0, label="loss")
    for s in spikes:
        ax.axvline(s.step, color="tab:red", ls="--", lw=0.8)
        ax.annotate(
            f"{s.step}" + (f"\n{s.first.name} (lag {s.first.lag})" if s.first else ""),
            (s.step, s.peak),
            fontsize=7,
            color="tab:red",
            xytext=(3, 0),
            textcoords="offset points",
        )
    ax.set_ylabel("loss")
    ax.set_title(f"{run_dir.name}: {len(spikes)} loss spike(s)")
    if names:
        ax2 = axes[1, 0]
        x = steps[has_rms]
        r = rms[has_rms]
        peak = (
            np.nan_to_num(np.nanmax(np.where(np.isfinite(r), r, -np.inf), axis=0), neginf=-1.0)
            if len(r)
            else []
        )
        top = list(np.argsort(-np.asarray(peak))[:top_k]) if len(r) else []
        for j in range(len(names)):
            if j not in top:
                ax2.plot(x, r[:, j], color="0.75", lw=0.5)
        for j in top:
            ax2.plot(x, r[:, j], lw=1.0, label=names[j])
        ax2.axhline(rms_threshold, color="tab:red", ls=":", lw=0.8, label=f"RMS threshold {rms_threshold:g}")
        ax2.annotate(f"RMS threshold {rms_threshold:g}", (1.0, rms_threshold), xycoords=("axes fraction", "data"),
                     xytext=(-4, 2), textcoords="offset points", ha="right", va="bottom", fontsize=7, color="tab:red")
        for s in spikes:
            ax2.axvline(s.step, color="tab:red", ls="--", lw=0.8)
        ax2.set_ylabel("RMS (per tensor)")
        ax2.set_xlabel("step")
        ax2.legend(fontsize=7, loc="upper left")
    else:
        ax.set_xlabel("step")
    from matplotlib.ticker import MaxNLocator

    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))  # shared x: whole steps for short runs too
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
