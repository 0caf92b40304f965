"""Loss-spike detection and RMS precursors (SPEC §4), on host arrays.

Definitions (used by ``RMSMonitor.spikes`` and ``plot_spikes``):

* **Loss spike.** At logged index i, take the finite losses among the previous ``window`` entries (at
  least ``min_history`` of them): the baseline ``b`` is their median, the noise level
  ``s = 1.4826 · median(|Δ|) / √2`` is the robust spread of their successive differences Δ (insensitive to
  the slow downward trend of a training loss, which would inflate a plain MAD). The score is
  ``z = (loss_i − b) / max(s, 1e-3·|b|, 1e-12)``; index i is *flagged* when ``z ≥ z_threshold`` **and**
  ``loss_i ≥ b + min_rise·|b|`` (a relative floor, so a very quiet curve does not flag noise). A run of
  consecutive flagged indices is one spike; its step is the first one (the onset), ``peak`` the largest
  loss in the run.
* **RMS precursor.** For a spike at step s and each parameter tensor, the earliest step u with
  ``s − max_lag ≤ u ≤ s − min_lag`` and ``RMS_u > rms_threshold``; ``lag = s − u``. The paper sees lags of
  1–8 steps, the vision tower's patch embedding first. Lag ≥ 1 because RMS_u drives the update of step u,
  whose effect first shows in the loss of step u + 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LossSpike", "RMSPrecursor", "find_loss_spikes", "find_spikes", "rms_precursors"]


@dataclass(frozen=True)
class RMSPrecursor:
    """One parameter tensor whose RMS exceeded the threshold shortly before a loss spike."""

    name: str
    step: int  # first step in the window with RMS > threshold
    lag: int  # spike step − step
    rms: float  # RMS at ``step``
    peak: float  # largest RMS of this tensor in the window


@dataclass(frozen=True)
class LossSpike:
    """A loss spike (onset step) and the RMS spikes that preceded it, earliest first."""

    step: int
    loss: float
    baseline: float
    zscore: float
    peak: float
    end_step: int
    precursors: tuple[RMSPrecursor, ...] = field(default=())

    @property
    def first(self) -> RMSPrecursor | None:
        """The earliest precursor (the paper: usually the patch embedding)."""
        return self.precursors[0] if self.precursors else None


def find_loss_spikes(
    steps: Sequence[int] | np.ndarray,
    loss: Sequence[float] | np.ndarray,
    *,
    window: int = 20,
    min_history: int = 8,
    z_threshold: float = 6.0,
    min_rise: float = 0.05,
) -> list[LossSpike]:
    """Loss spikes by the robust running z-score defined in the module docstring (no precursors)."""
    steps_a = np.asarray(steps, dtype=np.int64)
    loss_a = np.asarray(loss, dtype=np.float64)
    if steps_a.shape != loss_a.shape or steps_a.ndim != 1:
        raise ValueError(f"steps and loss must be 1-D of one length, got {steps_a.shape} and {loss_a.shape}")
    if window < 2 or min_history < 2 or min_history > window:
        raise ValueError(f"need 2 <= min_history <= window, got window={window}, min_history={min_history}")
    order = np.argsort(steps_a, kind="stable")
    steps_a, loss_a = steps_a[order], loss_a[order]
    flagged: list[tuple[int, float, float, float]] = []  # (index, baseline, z, loss)
    for i in range(len(loss_a)):
        x = loss_a[i]
        if not np.isfinite(x):
            continue
        prev = loss_a[max(0, i - window) : i]
        prev = prev[np.isfinite(prev)]
        if len(prev) < min_history:
            continue
        b = float(np.median(prev))
        s = 1.4826 * float(np.median(np.abs(np.diff(prev)))) / math.sqrt(2.0)
        z = (x - b) / max(s, 1e-3 * abs(b), 1e-12)
        if z >= z_threshold and x >= b + min_rise * abs(b):
            flagged.append((i, b, z, float(x)))
    spikes: list[LossSpike] = []
    run: list[tuple[int, float, float, float]] = []
    for item in [*flagged, None]:
        if item is not None and run and item[0] == run[-1][0] + 1:
            run.append(item)
            continue
        if run:
            i0, b0, z0, x0 = run[0]
            spikes.append(
                LossSpike(
                    step=int(steps_a[i0]),
                    loss=x0,
                    baseline=b0,
                    zscore=float(z0),
                    peak=max(r[3] for r in run),
                    end_step=int(steps_a[run[-1][0]]),
                )
            )
        run = [item] if item is not None else []
    return spikes


def rms_precursors(
    spike_step: int,
    rms_steps: Sequence[int] | np.ndarray,
    rms: np.ndarray,
    names: Sequence[str],
    *,
    rms_threshold: float = 2.0,
    min_lag: int = 1,
    max_lag: int = 8,
) -> tuple[RMSPrecursor, ...]:
    """Per tensor, the earliest RMS > threshold within [spike − max_lag, spike − min_lag], earliest first."""
    rs = np.asarray(rms_steps, dtype=np.int64)
    rms = np.asarray(rms, dtype=np.float64)
    if rms.ndim != 2 or rms.shape != (len(rs), len(names)):
        raise ValueError(f"rms must be [len(rms_steps), len(names)], got {rms.shape}")
    sel = (rs >= spike_step - max_lag) & (rs <= spike_step - min_lag)
    if not sel.any():
        return ()
    ws, wr = rs[sel], rms[sel]
    order = np.argsort(ws, kind="stable")
    ws, wr = ws[order], wr[order]
    out = []
    for j, name in enumerate(names):
        col = wr[:, j]
        hits = np.flatnonzero(np.nan_to_num(col, nan=-np.inf) > rms_threshold)
        if len(hits) == 0:
            continue
        k = hits[0]
        out.append(
            RMSPrecursor(
                name=str(name),
                step=int(ws[k]),
                lag=int(spike_step - ws[k]),
                rms=float(col[k]),
                peak=float(np.nanmax(col)),
            )
        )
    out.sort(key=lambda p: (p.step, -p.peak))
    return tuple(out)


def find_spikes(
    loss_steps: Sequence[int] | np.ndarray,
    loss: Sequence[float] | np.ndarray,
    rms_steps: Sequence[int] | np.ndarray,
    rms: np.ndarray,
    names: Sequence[str],
    *,
    window: int = 20,
    min_history: int = 8,
    z_threshold: float = 6.0,
    min_rise: float = 0.05,
    rms_threshold: float = 2.0,
    min_lag: int = 1,
    max_lag: int = 8,
) -> list[LossSpike]:
    """Loss spikes with their RMS precursors (definitions in the module docstring)."""
    spikes = find_loss_spikes(
        loss_steps, loss, window=window, min_history=min_history, z_threshold=z_threshold, min_rise=min_rise
    )
    out = []
    for s in spikes:
        pre = rms_precursors(
            s.step, rms_steps, rms, names, rms_threshold=rms_threshold, min_lag=min_lag, max_lag=max_lag
        )
        out.append(LossSpike(s.step, s.loss, s.baseline, s.zscore, s.peak, s.end_step, pre))
    return out
