"""lowbit.bench.profile: kernels classed by name, a profiled step's per-class and per-kernel tables (on the CPU: the
top-level operators), and ``--profile`` in ``lowbit bench step`` (the row's ``profile_ms`` and its file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lowbit.bench.profile import kernel_class, profile_steps
from lowbit.cli.main import main


@pytest.mark.parametrize("name, cls", [
    ("nvjet_sm90_tst_256x128_64x4_1x4_h_bz_coopA_NTT", "gemm"),
    ("_gemm", "gemm"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26", "attention"),
    ("_quantize_rows_kernel", "quantize"),
    ("triton_per_fused__to_copy_add_native_layer_norm_native_layer_norm_backward_view_10", "layernorm"),
    ("_stable_adamw_kernel", "optimizer"),
    ("triton_poi_fused_gelu_gelu_backward_view_4", "gelu/elementwise"),
    ("Memset (Device)", "other"),
    ("autograd::engine::evaluate_function: AddmmBackward0", "gemm"),  # CPU operators
    ("aten::linear", "gemm"),
])
def test_kernel_class(name: str, cls: str) -> None:
    assert kernel_class(name) == cls


def test_profile_steps_on_the_cpu_counts_each_step_once() -> None:
    a, b = torch.randn(64, 64), torch.randn(64, 64)

    def step() -> None:
        torch.nn.functional.gelu(a @ b).sum()

    one, three = profile_steps(step, 1, torch.device("cpu")), profile_steps(step, 3, torch.device("cpu"))
    for p in (one, three):
        assert p.device == "cpu" and p.per_class_ms["gemm"] > 0 and p.per_class_ms["gelu/elementwise"] > 0
        assert p.launches == pytest.approx(3.0)  # matmul, gelu, sum: per step, whatever the number of steps
        assert {n: round(c) for n, (_, c) in p.kernels.items()} == {"aten::matmul": 1, "aten::gelu": 1, "aten::sum": 1}
        assert p.total_ms == pytest.approx(sum(p.per_class_ms.values()))
        assert p.wall_ms > 0 and p.busy == pytest.approx(p.total_ms / p.wall_ms)
    text = three.text("tiny step")
    assert text.startswith("### tiny step\n") and "| gemm |" in text and "[gemm] aten::matmul" in text


def test_bench_step_profile_writes_the_rows_profile(tmp_path: Path, capsys) -> None:
    rc = main(["bench", "step", "--preset", "tiny", "--recipe", "switchback-sim", "--batch-size", "2", "--steps", "1",
               "--warmup", "1", "--device", "cpu", "--no-anchors", "--profile", "--out", str(tmp_path)])
    assert rc == 0
    rows = json.loads((tmp_path / "step.json").read_text())["rows"]
    assert [r["recipe"] for r in rows] == ["bf16", "switchback-sim"]
    for r in rows:
        assert r["profile_ms"]["gemm"] > 0 and r["profile_busy"] > 0, r
        text = Path(r["profile_file"]).read_text()
        assert text.startswith(f"### tiny {r['recipe']} (batch 2, compiled: no)") and "| gemm |" in text
    assert "### tiny switchback-sim" in capsys.readouterr().out


def test_negative_profile_is_one_error_line(capsys) -> None:
    assert main(["bench", "step", "--preset", "tiny", "--device", "cpu", "--profile", "-1"]) == 2
    assert "--profile >= 0" in capsys.readouterr().err
