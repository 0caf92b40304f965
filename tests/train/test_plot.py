"""``lowbit plot``: PNGs from a run directory's CSVs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lowbit.cli.main import main

RMS_NAMES = ["visual.patch_embed.weight", *(f"visual.blocks.{i}.mlp.fc.weight" for i in range(80)), "text.proj.weight"]
ACT_NAMES = ["visual.blocks.0", "visual.blocks.1", "text.blocks.0"]


def _fake_run(run: Path, rms: bool, steps: int = 20) -> None:
    run.mkdir()
    cols = ["step", "loss", "lr", "samples_per_s"]
    if rms:  # --monitor and --activations: 82 RMS columns (more rows than a heatmap used to name), 3 blocks
        cols += [f"rms/{n}" for n in RMS_NAMES] + [f"act/{n}" for n in ACT_NAMES] + ["act_max"]
    with (run / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for s in range(1, steps + 1):
            extra = [1 + (s == 10) * 5] + [0.9] * (len(RMS_NAMES) - 1) + [2.0, 3.0 + s, 1.5, 3.0 + s] if rms else []
            w.writerow([s, 3 - s / 10, 1e-3, 100.0, *extra])
    with (run / "eval.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "task", "top1", "chance", "n"])
        w.writerows([[10, "shape", 0.4, 0.125, 100], [20, "shape", 0.7, 0.125, 100]])


@pytest.mark.parametrize("rms", [False, True])
def test_plot_writes_pngs(tmp_path: Path, rms: bool, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    _fake_run(run, rms)
    assert main(["plot", str(run)]) == 0
    names = {p.name for p in (run / "plots").iterdir()}
    expected = {"loss.png", "lr.png", "zeroshot.png"} | ({"rms.png", "rms_heatmap.png", "activations.png"} if rms else set())
    assert names == expected
    for n in names:
        assert (run / "plots" / n).read_bytes()[:4] == b"\x89PNG"
    assert "loss.png" in capsys.readouterr().out


def test_plot_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "no metrics.csv" in capsys.readouterr().err
    assert main(["plot", "spikes"]) == 2
    assert "usage" in capsys.readouterr().err


def test_plot_spikes_uses_lowbit_monitor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("lowbit.monitor", reason="lowbit.monitor not in this build")
    from lowbit import monitor

    if not hasattr(monitor, "plot_spikes"):
        pytest.skip("lowbit.monitor.plot_spikes not in this build")
    run = tmp_path / "run"
    _fake_run(run, rms=True)
    assert main(["plot", "spikes", str(run)]) == 0
    png = run / "plots" / "spikes.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert str(png) in capsys.readouterr().out


def test_plots_name_heatmap_rows_and_use_whole_step_ticks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every heatmap row carries its parameter name; a 5-step run gets integer step ticks; the activations plot
    has one line per block; the spikes plot labels its threshold line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figures: dict[str, Figure] = {}
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: (figures.__setitem__(Path(path).name, fig),
                                                                    real_savefig(fig, path, **kw)))
    run = tmp_path / "run"
    _fake_run(run, rms=True, steps=5)
    assert main(["plot", str(run)]) == 0
    heat = figures["rms_heatmap.png"].axes[0]
    assert [t.get_text() for t in heat.get_yticklabels()] == RMS_NAMES
    for name in ("loss.png", "lr.png", "rms.png", "rms_heatmap.png", "activations.png"):
        ticks = [t for t in figures[name].axes[0].get_xticks() if 1 <= t <= 5]
        assert ticks and all(float(t).is_integer() for t in ticks), (name, ticks)
    act = figures["activations.png"].axes[0]
    assert sorted(line.get_label() for line in act.get_lines()) == sorted(ACT_NAMES)

    from lowbit.monitor import plot_spikes

    plot_spikes(run, tmp_path / "spikes.png", rms_threshold=2.0)
    rms_ax = figures["spikes.png"].axes[1]
    assert "RMS threshold 2" in [t.get_text() for t in rms_ax.get_legend().get_texts()]
    assert all(float(t).is_integer() for t in rms_ax.get_xticks())


def test_one_evaluation_is_drawn_as_bars_and_missing_rms_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default run evaluates once (at the end): a line plot of it was one dot per task."""
    from matplotlib.figure import Figure

    run = tmp_path / "run"
    _fake_run(run, rms=False)
    with (run / "eval.csv").open("w", newline="") as f:  # one evaluation, two tasks
        csv.writer(f).writerows([["step", "task", "top1", "chance", "n"], [20, "shape", 0.4, 0.125, 100],
                                 [20, "colour", 0.9, 0.125, 100]])
    drawn: dict[str, Figure] = {}
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: (drawn.__setitem__(Path(path).name, fig),
                                                                     save(fig, path, **kw)))
    assert main(["plot", str(run)]) == 0
    (ax,) = drawn["zeroshot.png"].axes
    assert [round(b.get_height()) for b in ax.patches] == [40, 90]  # one bar per task
    assert [t.get_text() for t in ax.get_xticklabels()] == ["shape", "colour"]
    assert "one evaluation" in ax.get_title() and "step 20" in ax.get_title()
    out, err = capsys.readouterr()
    assert "zeroshot.png" in out and "rms.png" not in out
    assert err.strip() == ("lowbit plot: no RMS plots: the run was trained without --monitor "
                           "(under torchrun: --set monitor=true)")
    # several evaluations: one line per task over the steps, no bars
    _fake_run(tmp_path / "curve", rms=True)
    assert main(["plot", str(tmp_path / "curve")]) == 0
    (ax,) = drawn["zeroshot.png"].axes
    assert not ax.patches and [len(line.get_xdata()) for line in ax.get_lines() if line.get_marker() == "o"] == [2]
    assert capsys.readouterr().err == ""
