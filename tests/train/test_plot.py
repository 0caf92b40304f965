"""``lowbit plot``: PNGs from a run directory's CSVs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lowbit.cli.main import main


def _fake_run(run: Path, rms: bool) -> None:
    run.mkdir()
    cols = ["step", "loss", "lr", "samples_per_s"] + (["rms/visual.patch_embed.weight", "rms/text.proj.weight"] if rms else [])
    with (run / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for s in range(1, 21):
            w.writerow([s, 3 - s / 10, 1e-3, 100.0] + ([1 + (s == 10) * 5, 0.9] if rms else []))
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
    expected = {"loss.png", "lr.png", "zeroshot.png"} | ({"rms.png", "rms_heatmap.png"} if rms else set())
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
