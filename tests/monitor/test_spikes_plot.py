"""The spike detector's definition on synthetic series, and ``plot_spikes`` on a run directory."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from lowbit.monitor import find_loss_spikes, find_spikes, plot_spikes, read_metrics_csv, rms_precursors


def noisy_curve(n: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 2.0 + 4.0 * np.exp(-t / 80) + 0.03 * rng.standard_normal(n)


def test_noise_is_not_a_spike_and_a_plateau_is_one_spike() -> None:
    steps = np.arange(300)
    loss = noisy_curve()
    assert find_loss_spikes(steps, loss) == []
    loss[200:206] += 0.8
    (s,) = find_loss_spikes(steps, loss)
    assert (s.step, s.end_step) == (200, 205)
    assert s.peak == pytest.approx(loss[200:206].max())
    assert s.zscore >= 6.0


def test_min_rise_guards_a_flat_curve() -> None:
    steps = np.arange(100)
    loss = np.full(100, 1.0)
    loss[60] = 1.001  # infinite z-score on a flat curve, but only a 0.1 % rise
    assert find_loss_spikes(steps, loss) == []
    loss[60] = 1.2
    assert [s.step for s in find_loss_spikes(steps, loss)] == [60]


def test_unsorted_steps_nan_losses_and_bad_arguments() -> None:
    steps = np.arange(120)
    loss = noisy_curve(120)
    loss[100] += 5.0
    loss[50] = np.nan
    perm = np.random.default_rng(1).permutation(120)
    assert [s.step for s in find_loss_spikes(steps[perm], loss[perm])] == [100]
    with pytest.raises(ValueError, match="one length"):
        find_loss_spikes(steps, loss[:-1])
    with pytest.raises(ValueError, match="min_history"):
        find_loss_spikes(steps, loss, window=5, min_history=10)


def test_precursor_window_edges() -> None:
    names = ["a", "b", "c", "d"]
    rms_steps = np.arange(80, 100)
    rms = np.ones((20, 4))
    rms[rms_steps == 90, 0] = 3.0  # lag 8 (= max_lag): reported
    rms[rms_steps == 89, 1] = 3.0  # lag 9: outside
    rms[rms_steps == 98, 2] = 3.0  # lag 0: outside (min_lag = 1)
    rms[rms_steps == 97, 3] = 2.5  # lag 1
    rms[rms_steps == 95, 3] = 2.1  # lag 3: earliest crossing for "d"
    pre = rms_precursors(98, rms_steps, rms, names)
    assert [(p.name, p.lag, p.rms, p.peak) for p in pre] == [("a", 8, 3.0, 3.0), ("d", 3, 2.1, 2.5)]
    assert rms_precursors(98, rms_steps, rms, names, rms_threshold=2.6) == rms_precursors(
        98, rms_steps, rms, names, rms_threshold=2.6, max_lag=8
    )
    assert [p.name for p in rms_precursors(98, rms_steps, rms, names, rms_threshold=2.6)] == ["a"]
    with pytest.raises(ValueError, match="rms must be"):
        rms_precursors(98, rms_steps, rms[:, :2], names)


def write_run(run_dir: Path, with_spike: bool = True) -> None:
    """A metrics.csv as the trainer writes it: step, loss, rms/<name>, extra columns, some blank cells."""
    run_dir.mkdir(parents=True, exist_ok=True)
    loss = noisy_curve(200)
    names = ["visual.conv1.weight", "visual.transformer.resblocks.0.mlp.c_fc.weight", "text_projection"]
    rng = np.random.default_rng(2)
    rms = 1.0 + 0.05 * rng.standard_normal((200, 3))
    if with_spike:
        rms[150, 0] = 6.0
        rms[152, 1] = 4.0
        loss[155:158] += 1.0
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss", "lr", *(f"rms/{n}" for n in names)])
        for i in range(200):
            cells = [f"{x:.6f}" for x in rms[i]]
            if i % 50 == 7:
                cells[2] = ""  # a tensor without a gradient that step
            w.writerow([i + 1, f"{loss[i]:.6f}" if i != 3 else "", "0.001", *cells])
        w.writerow([200, "", "", "", "", ""])  # e.g. an eval-only row


def test_read_metrics_csv(tmp_path: Path) -> None:
    write_run(tmp_path)
    d = read_metrics_csv(tmp_path / "metrics.csv")
    assert d["names"] == [
        "visual.conv1.weight",
        "visual.transformer.resblocks.0.mlp.c_fc.weight",
        "text_projection",
    ]
    assert d["rms"].shape == (201, 3) and len(d["steps"]) == 201
    assert np.isnan(d["loss"][3]) and np.isnan(d["rms"][7, 2]) and d["rms"][150, 0] == pytest.approx(6.0)
    spikes = find_spikes(d["steps"], d["loss"], d["steps"], d["rms"], d["names"])
    (s,) = spikes
    assert s.step == 156 and [(p.name, p.lag) for p in s.precursors] == [
        ("visual.conv1.weight", 5),
        ("visual.transformer.resblocks.0.mlp.c_fc.weight", 3),
    ]


@pytest.mark.parametrize("with_spike", [True, False])
def test_plot_spikes_writes_a_png(tmp_path: Path, with_spike: bool) -> None:
    run = tmp_path / "run"
    write_run(run, with_spike)
    out = plot_spikes(run, tmp_path / "spikes.png")
    assert out == tmp_path / "spikes.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert plot_spikes(run) == run / "spikes.png" and (run / "spikes.png").is_file()


def test_plot_spikes_without_rms_columns_and_missing_csv(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,loss\n" + "".join(f"{i},{3 - i / 100}\n" for i in range(50)))
    assert plot_spikes(run).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        plot_spikes(tmp_path / "nowhere")
