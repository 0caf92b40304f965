"""``bench/probes/train_compile.py``: its table's ratios on made-up rows, and one real (CPU, tiny) pair of runs."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("train_compile", ROOT / "bench" / "probes" / "train_compile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tc = _module()


def _args(**kw) -> argparse.Namespace:
    a = argparse.Namespace(data="synthetic", preset="tiny", batch_size=16, workers=0, steps=8,
                           recipes=["bf16", "switchback"], settings=["auto", "no-compile"], limit=300.0)
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def _cells(md: str, start: str) -> list[str]:
    line = next(line for line in md.splitlines() if line.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_ratios() -> None:
    rows = [{"recipe": "bf16", "setting": "auto", "rc": 0, "wall_s": 50.0, "first_line": "x", "steady": 600.0},
            {"recipe": "bf16", "setting": "no-compile", "rc": 0, "wall_s": 20.0, "first_line": "y", "steady": 400.0},
            {"recipe": "switchback", "setting": "auto", "rc": 0, "wall_s": 60.0, "first_line": "z", "steady": 750.0},
            {"recipe": "switchback", "setting": "no-compile", "rc": 1, "wall_s": 5.0, "first_line": ""}]
    md = tc.table(rows, _args())
    assert _cells(md, "| bf16 | auto |")[3:5] == ["1.50", "1.00"]
    assert _cells(md, "| switchback | auto |")[3:5] == ["", "1.25"]  # its no-compile run failed: no ratio
    assert _cells(md, "| switchback | no-compile |")[2] == "failed (1)"


@pytest.mark.slow
def test_runs_lowbit_train_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))
    monkeypatch.setattr(sys, "argv", ["train_compile.py", "--data", "synthetic", "--preset", "tiny", "--batch-size",
                                      "8", "--workers", "0", "--steps", "6", "--recipes", "bf16", "--out",
                                      str(tmp_path)])
    tc.main()
    rows = json.loads((tmp_path / "train_compile.json").read_text())["rows"]
    assert [(r["setting"], r["rc"]) for r in rows] == [("auto", 0), ("no-compile", 0)]
    assert "(auto: CPU)" in rows[0]["first_line"] and "eager (compile false)" in rows[1]["first_line"]
    assert all(r["steady"] > 0 for r in rows)
    assert "| bf16 | auto |" in (tmp_path / "train_compile.md").read_text()
