"""``lowbit bench optim`` runs end to end on the CPU at a tiny size and writes its JSON and markdown."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from lowbit.bench import optim as bench_optim


def test_clip_shapes_match_the_published_sizes() -> None:
    # CLIP ViT-B/32 has 151.3 M parameters (open_clip); ViT-H/14 has 986 M
    b = sum(_numel(s) for _, s in bench_optim.clip_param_shapes(bench_optim.PRESETS["vit-b-32"]))
    h = sum(_numel(s) for _, s in bench_optim.clip_param_shapes(bench_optim.PRESETS["vit-h-14"]))
    assert b == pytest.approx(151.28e6, rel=2e-3)
    assert h == pytest.approx(986.1e6, rel=2e-3)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_bench_optim_runs_on_cpu(tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser()
    bench_optim.add_arguments(parser)
    args = parser.parse_args(
        ["--device", "cpu", "--preset", "tiny", "--repeats", "2", "--warmup", "1", "--with-reference",
         "--out", str(tmp_path)]
    )  # fmt: skip
    assert bench_optim.run(args) == 0
    assert isinstance(bench_optim.HELP, str) and bench_optim.HELP
    data = json.loads((tmp_path / "optim-tiny-cpu.json").read_text())
    assert data["env"]["torch"] and "device_name" in data["env"] and "triton" in data["env"]
    (rec,) = data["records"]
    assert rec["baseline"] == "torch AdamW foreach" and rec["n_params"] > 0
    by = {r["impl"]: r for r in rec["results"]}
    assert by["torch AdamW foreach"]["ratio"] == pytest.approx(1.0)
    for name in ("StableAdamW foreach", "StableAdamW reference", "torch AdamW fused"):
        assert by[name]["median_ms"] > 0 and by[name]["ratio"] > 0
    assert "StableAdamW fused" in rec["not_run"]
    md = (tmp_path / "optim-tiny-cpu.md").read_text()
    assert "| StableAdamW foreach |" in md
    assert "## summary" in md and "fp32 ms (ratio)" in md
    assert "StableAdamW foreach" in capsys.readouterr().out
