"""``lowbit bench linear/mlp``: the timing harness runs on the CPU at a tiny token count and rejects bad modes."""

from __future__ import annotations

import argparse

import pytest
import torch

from lowbit.bench import linear as bench_linear


def test_mlp_bench_rows_on_cpu() -> None:
    parser = argparse.ArgumentParser()
    bench_linear.add_arguments(parser)
    args = parser.parse_args(["--shapes", "vit-b-32", "--tokens", "16", "--recipes", "switchback-sim",
                              "--device", "cpu"])
    rows = bench_linear.run_linear(args, mlp=True)["rows"]
    kinds = [r["kind"] for r in rows]
    assert kinds[:2] == ["nn.Linear", "switchback-sim"] and {r["mode"] for r in rows} == {"eager"}
    sim = rows[1]
    assert sim["error"] is None and sim["ms"] > 0 and sim["speedup_vs_bf16"] == pytest.approx(rows[0]["ms"] / sim["ms"])
    assert sim["dims"] == "768→3072→768" and sim["tokens"] == 16


def test_cudagraphs_needs_cuda() -> None:
    parser = argparse.ArgumentParser()
    bench_linear.add_arguments(parser)
    args = parser.parse_args(["--shapes", "vit-b-32", "--tokens", "16", "--device", "cpu", "--cudagraphs"])
    with pytest.raises(ValueError, match="--cudagraphs needs a CUDA device"):
        bench_linear.run_linear(args, mlp=True)


def test_fwd_bwd_modes() -> None:
    module = torch.nn.Linear(8, 4)
    step, tensors = bench_linear._fwd_bwd(module, 3, 8, "cpu", torch.float32, "eager")
    step()
    assert module.weight.grad is not None and tensors[0].grad.shape == (3, 8)
    with pytest.raises(ValueError, match="mode must be one of"):
        bench_linear._fwd_bwd(module, 3, 8, "cpu", torch.float32, "graphs")


def test_mlp_step_runs_and_resets_grads(monkeypatch) -> None:
    monkeypatch.setitem(bench_linear.SHAPES, "unit", (16, 64, 8))
    seen = {}
    real = bench_linear._fwd_bwd

    def spy(*args, **kw):
        step, tensors = real(*args, **kw)
        seen["tensors"] = tensors
        return step, tensors

    monkeypatch.setattr(bench_linear, "_fwd_bwd", spy)
    one = bench_linear.mlp_step("switchback-sim", "unit", device="cpu", dtype=torch.float32)
    x, *params = seen["tensors"]
    assert x.shape == (8, 16) and [tuple(p.shape) for p in params][:2] == [(64, 16), (64,)]
    one()
    assert all(t.grad is None for t in seen["tensors"])


def test_compiled_quantize_variants_are_timed_side_by_side(monkeypatch) -> None:
    monkeypatch.setitem(bench_linear.SHAPES, "unit", (16, 64, 8))
    parser = argparse.ArgumentParser()
    bench_linear.add_arguments(parser)
    args = parser.parse_args(["--shapes", "unit", "--recipes", "switchback-sim", "--device", "cpu", "--compile",
                              "--compiled-quantize", "kernel", "inductor"])
    assert bench_linear._variants(args) == [("eager", None), ("compiled", "kernel"), ("compiled", "inductor")]
    rows = bench_linear.run_linear(args, mlp=True)["rows"]
    got = [(r["mode"], r["kind"]) for r in rows if r["kind"] in ("nn.Linear", "switchback-sim")]
    assert got == [(m, k) for m in ("eager", "compiled", "compiled (inductor quantize)")
                   for k in ("nn.Linear", "switchback-sim")]
    assert all(r["error"] is None and r["ms"] > 0 for r in rows if r["kind"] == "switchback-sim"), rows


def test_matmul_rows_named_lowbit_run_lowbit_and_say_so(monkeypatch) -> None:
    """A "lowbit gemm" row pins lowbit's kernel (``backend="auto"`` could pick cuBLAS for fp8 under that name),
    and every row says which backend ran. Recorded with stand-in matmuls at a tiny shape."""
    import lowbit.kernels.gemm as gemm_mod
    import lowbit.kernels.matmul as matmul_mod

    assert bench_linear.matmul_backend(torch.device("cpu")) == "torch"  # no Triton kernel on the CPU: the reference
    seen: list[tuple[str, str]] = []

    def fake_scaled_mm(qa, qb, sa, sb, *, bias=None, out_dtype=torch.bfloat16, backend="auto"):
        seen.append(("scaled_mm", backend))
        return torch.zeros(qa.shape[0], qb.shape[0])

    monkeypatch.setattr(matmul_mod, "scaled_mm", fake_scaled_mm)
    monkeypatch.setattr(gemm_mod, "gemm", lambda *a, backend="auto", **k: seen.append(("gemm", backend)))
    monkeypatch.setattr(bench_linear, "_breakdown", lambda device, fp8_ok: [])
    monkeypatch.setattr(bench_linear, "matmul_backend", lambda device: "triton")  # as on a CUDA device
    monkeypatch.setattr(bench_linear, "bench", lambda fn, device, **kw: (fn(), 1.0)[1])
    rows = bench_linear.run_matmul(argparse.Namespace(device="cpu"), shapes=[(32, 16, 16)])["rows"]
    assert seen and all(backend == "triton" for _, backend in seen)
    lowbit_rows = [r for r in rows if "lowbit gemm" in r["kernel"]]
    assert lowbit_rows and all(r["backend"] == "triton" for r in lowbit_rows)
    assert {r["backend"] for r in rows if "torch._int_mm" in r["kernel"] or "cuBLAS" in r["kernel"]} == {"cuBLAS"}
