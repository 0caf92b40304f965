"""``lowbit bench step/model`` rows: one failing or crashing row loses only itself (``--isolate``: a process per
row), the table of finished rows is always written (Ctrl-C, an exception), and every throughput has its MFU.

The rows here are stand-ins (a module written to a temporary folder, importable by the child processes through
``PYTHONPATH``): they return a made-up timing at once, raise, or kill their process with ``os._exit``, as a CUDA
illegal memory access kills it on a GPU."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from lowbit.bench import common, rows
from lowbit.bench import step as bench_step
from lowbit.cli.main import main

SRC = Path(__file__).resolve().parents[2] / "src"

FAKE = textwrap.dedent('''
    import os

    def row(job):
        recipe = job["recipe"]
        if recipe == "switchback-sim":
            os._exit(3)  # a crash without a Python exception: the process is gone
        if recipe == "switchback":
            raise ValueError("boom in " + recipe)
        if recipe == "fp8-switchback" and job.get("interrupt"):
            raise KeyboardInterrupt
        ms = float(job["args"].get("fake_ms") or 100.0)
        return {"ms_per_step": ms, "images_per_s": job["batch"] / ms * 1000, "converted": "0/22", "pid": os.getpid()}
''')


@pytest.fixture
def fake_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The stand-in row module, importable here and in child processes; ``bench step`` pointed at it."""
    folder = tmp_path / "fakemods"
    folder.mkdir()
    (folder / "lowbit_fake_rows.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), str(SRC), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(bench_step, "ROW_TARGET", "lowbit_fake_rows:row")
    return "lowbit_fake_rows:row"


def _step(tmp_path: Path, *recipes: str, extra: tuple[str, ...] = ()) -> tuple[int, dict, str]:
    out = tmp_path / "out"
    rc = main(["bench", "step", "--preset", "tiny", "--recipe", *recipes, "--batch-size", "4", "--steps", "1",
               "--warmup", "0", "--device", "cpu", "--no-anchors", "--out", str(out), *extra])
    return rc, json.loads((out / "step.json").read_text()), (out / "step.md").read_text()


def test_run_row_reports_a_crash_an_exception_and_a_result(fake_rows: str) -> None:
    job = {"args": {}, "batch": 4}
    died = rows.run_row(fake_rows, {**job, "recipe": "switchback-sim"}, isolate=True)
    assert died["error"].startswith("the row's process died (exit code 3)"), died
    raised = rows.run_row(fake_rows, {**job, "recipe": "switchback"}, isolate=True)
    assert raised == {"error": "ValueError: boom in switchback"}
    assert rows.run_row(fake_rows, {**job, "recipe": "switchback"}, isolate=False) == raised
    ok = rows.run_row(fake_rows, {**job, "recipe": "bf16"}, isolate=True)
    assert ok["images_per_s"] == pytest.approx(40.0) and ok["pid"] != os.getpid()  # it ran in a child
    assert rows.run_row(fake_rows, {**job, "recipe": "bf16"}, isolate=False)["pid"] == os.getpid()


def test_a_crashing_row_loses_only_itself(tmp_path: Path, fake_rows: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, data, md = _step(tmp_path, "bf16", "switchback-sim", "switchback", "fp8-switchback", extra=("--isolate",))
    assert rc == 0 and data["isolated"] is True
    by = {r["recipe"]: r for r in data["rows"]}
    assert list(by) == ["bf16", "switchback-sim", "switchback", "fp8-switchback"]
    assert "exit code 3" in by["switchback-sim"]["error"] and by["switchback"]["error"] == "ValueError: boom in switchback"
    assert "error" not in by["fp8-switchback"] and by["fp8-switchback"]["vs_bf16"] == pytest.approx(1.0)
    assert "| tiny | fp8-switchback | 4 |" in md and "exit code 3" in md
    assert "| tiny | fp8-switchback |" in capsys.readouterr().out  # the closing table is printed as well


def test_ctrl_c_keeps_the_finished_rows(tmp_path: Path, fake_rows: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = bench_step.run_row
    monkeypatch.setattr(bench_step, "run_row", lambda target, job, isolate: real(target, {**job, "interrupt": True},
                                                                                 isolate))
    rc, data, md = _step(tmp_path, "bf16", "fp8-switchback", "switchback-m")
    assert rc == 130 and "Ctrl-C after 1 row" in data["interrupted"]
    assert [r["recipe"] for r in data["rows"]] == ["bf16"] and "| tiny | bf16 | 4 |" in md


def test_an_exception_outside_the_rows_still_writes_the_table(tmp_path: Path, fake_rows: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def add_mfu(row, *a):
        calls.append(row["recipe"])
        if len(calls) == 2:
            raise RuntimeError("a bug after the first row")
        return None

    monkeypatch.setattr(common, "add_mfu", add_mfu)  # RowTable.add (lowbit.bench.common) calls it per row
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="a bug after the first row"):
        bench_step.run(bench_step_args("--out", str(out), "--recipe", "bf16", "fp8-switchback"))
    assert [r["recipe"] for r in json.loads((out / "step.json").read_text())["rows"]] == ["bf16"]


def bench_step_args(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    bench_step.add_arguments(parser)
    return parser.parse_args(["--preset", "tiny", "--batch-size", "4", "--steps", "1", "--warmup", "0",
                              "--device", "cpu", "--no-anchors", *argv])


def test_every_row_has_tflops_and_mfu_and_an_implausible_one_is_flagged(
        tmp_path: Path, fake_rows: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from lowbit.hardware import dense_bf16_peak_tflops

    h100 = "NVIDIA H100 80GB HBM3"
    monkeypatch.setattr(bench_step, "environment", lambda device: {"device": h100})
    flops = bench_step.flops_per_image("tiny", 4)
    assert flops and flops > 0
    # a step time at which the tiny CLIP would run at 80% of the H100's bf16 peak: an impossible figure
    ms = 4 * flops / (0.8 * dense_bf16_peak_tflops(h100) * 1e12) * 1000
    # the stand-in reads its step time from the options: pass it through the job
    monkeypatch.setattr(bench_step, "plain_args", lambda args: {**rows.plain_args(args), "fake_ms": ms})
    rc, data, md = _step(tmp_path, "bf16")
    assert rc == 0
    (row,) = data["rows"]
    assert row["mfu"] == pytest.approx(0.8) and row["tflops"] == pytest.approx(0.8 * 989.4)
    assert "80.0% (implausible)" in md
    assert "MFU" in capsys.readouterr().err  # lowbit.hardware.mfu_warning's line


def test_mfu_is_unknown_on_the_cpu_and_blank_for_an_error_row() -> None:
    row: dict = {"recipe": "bf16"}
    assert common.add_mfu(row, 1e9, 100.0, "cpu (x86_64, 2 threads)") is None
    assert row["tflops"] == pytest.approx(0.1) and row["mfu"] is None
    table = common.markdown_table([row, {"recipe": "x", "error": "E"}], ["recipe", "tflops", "mfu", "error"])
    assert table.splitlines()[2:] == ["| bf16 | 0.100 | unknown |  |", "| x |  |  | E |"]


def test_row_table_ratios_per_group_and_one_line_per_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``common.RowTable`` (``bench step`` and ``bench model``'s rows): vs_bf16 against the group's own baseline row,
    none where that row failed; files rewritten per row; Ctrl-C ends the run with the finished rows written."""
    payload: dict = {"env": {"device": "cpu (x86_64, 2 threads)"}, "rows": []}
    table = common.RowTable("step", str(tmp_path), ["preset", "recipe", "vs_bf16", "error"], payload,
                            rate="images_per_s", samples="images_per_s", unit="img/s")
    with table.recording():
        table.new_group()
        table.add({"preset": "a", "recipe": "bf16", "ms_per_step": 10.0, "images_per_s": 200.0}, "a bf16", 1e9)
        table.add({"preset": "a", "recipe": "x", "ms_per_step": 20.0, "images_per_s": 100.0}, "a x", 1e9,
                  detail=lambda row: ", more")
        assert len(json.loads((tmp_path / "step.json").read_text())["rows"]) == 2  # saved after each row
        table.new_group()
        table.add({"preset": "b", "recipe": "bf16", "error": "E"}, "b bf16", None)
        table.add({"preset": "b", "recipe": "x", "ms_per_step": 20.0, "images_per_s": 100.0}, "b x", None)
        raise KeyboardInterrupt
    a_bf16, a_x, b_bf16, b_x = payload["rows"]
    assert a_bf16["vs_bf16"] == 1.0 and a_x["vs_bf16"] == 0.5 and a_x["tflops"] == pytest.approx(0.1)
    assert "vs_bf16" not in b_bf16 and "vs_bf16" not in b_x  # not against group a's baseline
    assert payload["interrupted"] == "stopped by Ctrl-C after 4 row(s)"
    out = capsys.readouterr().out
    assert "[a x] 20.0 ms/step, 100.0 img/s (0.500x bf16), MFU unknown, more" in out and "[b bf16] ERROR E" in out
    assert "| b | x |  |  |" in (tmp_path / "step.md").read_text()
