"""``lowbit bench train``: ``lowbit train`` per recipe as a user runs it, its table read from each summary.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lowbit.bench import train as bench_train
from lowbit.cli.main import main

SRC = Path(__file__).resolve().parents[2] / "src"


def test_a_row_reads_the_summary_and_leaves_missing_fields_blank() -> None:
    old = {"samples_per_s_steady": 500.0, "peak_memory_gb": None, "compiled": "eager (auto: CPU)", "final_loss": 2.0}
    row = bench_train.row_from_summary(old, batch=100)
    assert row["images_per_s"] == 500.0 and row["ms_per_step"] == pytest.approx(200.0)
    assert row["data_wait"] is None and row["tflops"] is None and "mfu" not in row  # a trainer without those fields
    new = {**old, "global_batch": 100, "flops_per_sample": 3e9, "mfu_steady": 0.42, "data_wait_frac": 0.125}
    row = bench_train.row_from_summary(new, batch=100)
    assert row["tflops"] == pytest.approx(1.5) and row["mfu"] == 0.42 and row["data_wait"] == 0.125
    md = bench_train.table({"rows": [{"recipe": "bf16", "preset": "tiny", **row}]})
    assert "| 42.0% |" in md and "| 12.5% |" in md and "| eager (auto: CPU) |" in md


@pytest.mark.slow
def test_runs_lowbit_train_per_recipe_and_a_failing_run_is_a_row(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "out"
    rc = main(["bench", "train", "--preset", "tiny", "--batch-size", "4", "--steps", "4", "--workers", "0",
               "--device", "cpu", "--recipe", "bf16", "no-such-recipe", "switchback-sim", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "train.json").read_text())
    rows = {r["recipe"]: r for r in data["rows"]}
    assert list(rows) == ["bf16", "no-such-recipe", "switchback-sim"]
    assert "no-such-recipe" in rows["no-such-recipe"]["error"] and "exited with 2" in rows["no-such-recipe"]["error"]
    for recipe in ("bf16", "switchback-sim"):
        r = rows[recipe]
        assert "error" not in r, r
        assert r["images_per_s"] > 0 and r["ms_per_step"] == pytest.approx(4 / r["images_per_s"] * 1000)
        assert r["first_line"].startswith("lowbit train: cpu") and (out / "runs" / recipe / "summary.json").is_file()
    assert rows["switchback-sim"]["vs_bf16"] == pytest.approx(
        rows["switchback-sim"]["images_per_s"] / rows["bf16"]["images_per_s"])
    assert data["env"]["device"] == rows["bf16"].get("device", data["env"]["device"])
    md = (out / "train.md").read_text()
    assert "| tiny | switchback-sim | 4 |" in md and "First lines" in md
    assert "| tiny | bf16 |" in capsys.readouterr().out
    assert not list((out / "runs" / "bf16").glob("*.pt"))  # --save-every -1: no checkpoint written


def test_fuse_variants_pass_their_flag_and_bad_variants_are_refused(tmp_path: Path) -> None:
    import argparse

    from lowbit.bench.train import add_arguments, train_command

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--preset", "tiny"])
    plain = train_command(args, "fp8-switchback", tmp_path)
    fused = train_command(args, "fp8-switchback:fused", tmp_path)
    per_linear = train_command(args, "fp8-switchback:per-linear", tmp_path)
    assert not {"--fuse", "--no-fuse"} & set(plain) and fused[-1] == "--fuse" and per_linear[-1] == "--no-fuse"
    assert fused[fused.index("--recipe") + 1] == "fp8-switchback"
    with pytest.raises(ValueError, match="unknown recipe variant"):
        train_command(args, "fp8-switchback:bogus", tmp_path)
