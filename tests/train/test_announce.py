"""What ``lowbit train`` prints first (what it chose) and last (steady-state images/s beside the whole-run average)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from train_fakes import SMALL

from lowbit.cli.main import main
from lowbit.cli.train import throughput_line


def _train(tmp_path: Path, *extra: str) -> tuple[list[str], dict]:
    model = SMALL["model"]
    args = ["train", "--preset", "tiny", "--data", "fake", "--zeroshot", "none", "--batch-size", "8", "--steps", "8",
            "--warmup", "1", "--optimizer", "adamw", "--no-progress", "--threads", "1", "--out", str(tmp_path / "run"),
            *[f"--set=model.{tower}.{k}={v}" for tower in ("vision", "text") for k, v in model[tower].items()],
            f"--set=model.embed_dim={model['embed_dim']}", *extra]
    assert main(args) == 0
    return args, json.loads((tmp_path / "run" / "summary.json").read_text())


def test_first_line_says_what_it_chose_and_the_end_gives_steady_images_per_s(
        tmp_path: Path, fake_data: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    _, summary = _train(tmp_path, "--recipe", "switchback-sim", "--layers", "clip")
    lines = capsys.readouterr().out.splitlines()
    first = lines[0]
    assert first.startswith("lowbit train: cpu ") and ", fp32 | " in first  # device, precision
    # 1-layer towers: 4 linears each converted, the 2 final projections not (layers clip)
    assert "| recipe switchback-sim (8/10 linears), layers clip, per-linear (auto: eager) |" in first
    assert "| eager (auto: CPU) |" in first
    assert "| tiny (" in first and "| adamw lr " in first and "| 8 steps x 8 |" in first
    assert first.endswith(str(tmp_path / "run"))
    end = next(line for line in lines if line.startswith("throughput: "))
    steady, average = (float(x) for x in re.findall(r"([\d.]+) images/s", end))
    assert steady == pytest.approx(summary["samples_per_s_steady"], abs=0.051)
    assert average == pytest.approx(summary["samples_per_s"], abs=0.051)
    assert "steady state (after warm-up, MFU unknown)" in end
    assert "whole-run average (warm-up and compilation included, MFU unknown)" in end


def test_first_line_names_the_compile_mode(tmp_path: Path, fake_data: SimpleNamespace,
                                           capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """No compilation is run: the header is printed before the first step, which is cut short."""
    import lowbit.train.loop as loop

    class Stop(Exception):
        pass

    def stop(*a: object, **k: object) -> None:
        raise Stop

    monkeypatch.setattr(loop, "train_step", stop)
    with pytest.raises(Stop):
        main(["train", "--preset", "tiny", "--data", "fake", "--zeroshot", "none", "--optimizer", "adamw",
              "--no-progress", "--out", str(tmp_path / "c"), "--compile", "--compile-mode", "reduce-overhead",
              "--layers", "auto", "--recipe", "fp8-switchback-sim", "--fuse"])
    first = capsys.readouterr().out.splitlines()[0]
    assert "| recipe fp8-switchback-sim (0/22 linears), layers auto, fused (0 MLPs, 0 LayerNorms) |" in first
    assert ("| torch.compile model, mode reduce-overhead (no CUDA graphs on cpu), quantize: kernel (compile true) |"
            in first)


def test_throughput_line_without_a_steady_state() -> None:
    summary = {"samples_per_s": 12.0, "samples_per_s_steady": None, "device": "cpu", "recipe": "none",
               "precision": "fp32"}
    assert throughput_line(summary) == ("throughput: 12.0 images/s whole-run average (warm-up and compilation "
                                        "included, MFU unknown) on cpu (none, fp32)")
