"""The training loop on a tiny model and fake data: learning, exact resume, NaN stop, checkpoints, CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from train_fakes import SMALL, make_fake_data

from lowbit.cli.main import main
from lowbit.train import NonFiniteLossError, TrainConfig, load_checkpoint, save_checkpoint, train
from lowbit.train.schedule import WarmupCosine


def _cfg(tmp_path: Path, name: str = "run", **kw: object) -> TrainConfig:
    return TrainConfig.from_dict({**SMALL, "out": str(tmp_path / name), **kw})


def _losses(run: Path) -> dict[int, float]:
    with (run / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def test_training_reduces_loss_and_beats_chance(tmp_path: Path, fake_data: SimpleNamespace) -> None:
    summary = train(_cfg(tmp_path, steps=30, warmup=3, save_every=0))
    losses = _losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, 31))
    first, last = losses[1], sum(losses[s] for s in range(26, 31)) / 5
    assert last < 0.75 * first, (first, last)
    assert summary["zeroshot"]["fake-colors"] > 2 * summary["chance"]["fake-colors"] == 0.5
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["recipe"] == "none" and s["versions"]["torch"] == torch.__version__
    assert {"final_loss", "zeroshot", "chance", "samples_per_s", "config", "device"} <= set(s)
    with (tmp_path / "run" / "eval.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["task"] == "fake-colors" and int(rows[-1]["step"]) == 30
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "run" / "tensorboard").iterdir())


@pytest.mark.parametrize(("recipe", "optimizer"), [("none", "adamw"), ("switchback", "stableadamw")])
def test_resume_is_exact(tmp_path: Path, fake_data: SimpleNamespace, recipe: str, optimizer: str) -> None:
    if recipe != "none":
        pytest.importorskip("lowbit.nn").__dict__.get("convert") or pytest.skip("lowbit.nn.convert not in this build")
        pytest.importorskip("lowbit.optim").__dict__.get("StableAdamW") or pytest.skip("no StableAdamW")
    common = {"steps": 8, "save_every": 0, "zeroshot": "none", "recipe": recipe, "optimizer": optimizer}
    train(_cfg(tmp_path, "full", **common))
    train(_cfg(tmp_path, "split", stop_at=4, **common))
    assert load_checkpoint(tmp_path / "split")["step"] == 4
    assert max(_losses(tmp_path / "split")) == 4
    # Resume from the run directory: the checkpoint's config is reused, only `steps` could change.
    train(TrainConfig.from_dict({**SMALL, **common, "resume": str(tmp_path / "split")}))
    full, split = _losses(tmp_path / "full"), _losses(tmp_path / "split")
    assert sorted(split) == list(range(1, 9))
    assert split[8] == full[8]  # bitwise on CPU
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "split")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["data_position"] == b["data_position"] == 8 * 16


def test_resume_refuses_changed_computation(tmp_path: Path, fake_data: SimpleNamespace) -> None:
    train(_cfg(tmp_path, steps=2, zeroshot="none"))
    with pytest.raises(ValueError, match=r"changed option.*lr"):
        train(_cfg(tmp_path, steps=4, zeroshot="none", lr=1e-4, resume=str(tmp_path / "run")))


def test_nan_loss_stops_naming_step_and_keeps_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lowbit.train.batches.data_module", lambda: make_fake_data(nan_at=5 * 16))  # step 6 sees NaN
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 6.*checkpoint\.pt \(step 3\)") as e:
        train(_cfg(tmp_path, steps=10, save_every=3))
    assert e.value.step == 6 and e.value.checkpoint_step == 3
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert max(_losses(tmp_path / "run")) == 5


def test_checkpoint_is_plain_and_written_atomically(tmp_path: Path, fake_data: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    train(_cfg(tmp_path, steps=2, zeroshot="none"))
    path = tmp_path / "run" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "data_position", "step", "config"} <= set(ckpt)
    assert set(ckpt["rng"]) == {"torch", "cuda", "python", "numpy"}
    before = path.read_bytes()

    def boom(*a: object, **k: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"x": torch.ones(1)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")) == []


def test_warmup_cosine() -> None:
    f = WarmupCosine(warmup=4, steps=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(f(13), 0.1) and math.isclose(f(4 + 9 / 2), 0.55)
    assert all(f(s) >= f(s + 1) for s in range(4, 20))


def test_cli_end_to_end(tmp_path: Path, fake_data: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        "preset: tiny\nrecipe: none\ndata: fake\nzeroshot: fake\nsteps: 50\nbatch-size: 8\nlr: 1e-2\n"
        "model:\n  vision: {image_size: 16, patch_size: 8, width: 32, layers: 1, heads: 2}\n"
        "  text: {width: 32, layers: 1, heads: 2, context_length: 24}\n  embed_dim: 32\n"
    )
    out = tmp_path / "cli"
    rc = main(["train", "--config", str(cfg_file), "--steps", "3", "--optimizer", "adamw", "--no-progress",
               "--out", str(out), "--set", "model.qk_norm=true", "--set", "warmup=1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "zero-shot top-1 on fake-colors" in printed and "chance 25.0%" in printed
    saved = json.loads((out / "summary.json").read_text())["config"]
    assert saved["steps"] == 3 and saved["batch_size"] == 8 and saved["lr"] == 1e-2 and saved["warmup"] == 1
    assert saved["model"]["qk_norm"] is True and saved["model"]["embed_dim"] == 32
    assert torch.load(out / "checkpoint.pt", weights_only=True)["model_config"]["qk_norm"] is True
    assert sorted(_losses(out)) == [1, 2, 3]


def test_cli_reports_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--lr", "-1", "--out", str(tmp_path)]) == 2
    assert "lr=-1.0" in capsys.readouterr().err
    assert main(["train", "--set", "nope=1"]) == 2
    assert "'nope'" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("optimizer", ["adamw", "stableadamw"])
def test_monitor_logs_rms_per_parameter(tmp_path: Path, fake_data: SimpleNamespace, optimizer: str) -> None:
    try:
        from lowbit.monitor import RMSMonitor  # noqa: F401
        from lowbit.optim import StableAdamW  # noqa: F401
    except ImportError:
        pytest.skip("lowbit.monitor.RMSMonitor / lowbit.optim.StableAdamW not in this build")
    train(_cfg(tmp_path, steps=3, zeroshot="none", monitor=True, optimizer=optimizer))
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert "rms/visual.patch_embed.weight" in rows[0] and "rms/text.proj.weight" in rows[0]
    assert all(math.isfinite(float(r["rms/visual.patch_embed.weight"])) for r in rows)


def test_cli_resume_takes_options_from_the_checkpoint(tmp_path: Path, fake_data: SimpleNamespace) -> None:
    run = tmp_path / "run"
    train(_cfg(tmp_path, steps=6, stop_at=3, zeroshot="none", lr=2e-3))
    # Only --resume (and a longer schedule would need --steps): everything else comes from the checkpoint.
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    saved = json.loads((run / "summary.json").read_text())
    assert saved["step"] == 6 and saved["config"]["lr"] == 2e-3 and saved["config"]["data"] == "fake"
    assert sorted(_losses(run)) == list(range(1, 7))
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2


def test_accumulation_equals_the_full_batch(tmp_path: Path, fake_data: SimpleNamespace, float64: None) -> None:
    """2 micro-batches of 8 = one batch of 16: the cached-feature scheme gives every micro-batch's loss the
    whole batch.

    In float64 (the point is the plumbing): Adam divides by sqrt(v) + eps, so a gradient element near zero turns
    a rounding difference dg into a weight difference of up to lr/eps * dg (3e3 x here) per step, and in float32
    that reached 1.3e-4 on one host and not on another. In float64, dg ~ 1e-16 x the gradient scale, so 4 steps
    stay far below 1e-10 (observed 6e-14). The losses are float32 (``clip_loss`` computes the logits in float32)
    and may differ by a few float32 ulps: 1e-5. On the CPU: a GPU trains in bf16 autocast."""
    common = {"steps": 4, "save_every": 0, "zeroshot": "none", "device": "cpu"}
    train(_cfg(tmp_path, "full", **common))
    train(_cfg(tmp_path, "accum", batch_size=8, accum_steps=2, **common))
    full, accum = _losses(tmp_path / "full"), _losses(tmp_path / "accum")
    assert list(accum.values()) == pytest.approx(list(full.values()), abs=1e-5)
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "accum")
    assert a["model"]["logit_scale"].dtype == torch.float64
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, atol=1e-10, rtol=0)
    assert b["data_position"] == a["data_position"] == 4 * 16


def test_resume_refuses_another_global_batch(tmp_path: Path, fake_data: SimpleNamespace) -> None:
    train(_cfg(tmp_path, steps=4, stop_at=2, zeroshot="none"))
    with pytest.raises(ValueError, match="global batch 8"):
        train(_cfg(tmp_path, steps=4, zeroshot="none", batch_size=8, resume=str(tmp_path / "run")))
    train(_cfg(tmp_path, steps=4, zeroshot="none", batch_size=8, accum_steps=2, resume=str(tmp_path / "run")))
    assert sorted(_losses(tmp_path / "run")) == [1, 2, 3, 4]


def test_activations_logs_block_magnitudes(tmp_path: Path, fake_data: SimpleNamespace) -> None:
    """--activations adds act/<block> columns: finite, positive, one per transformer block of both towers."""
    train(_cfg(tmp_path, steps=3, zeroshot="none", activations=True))
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    cols = [k for k in rows[0] if k.startswith("act/")]
    assert any("visual" in c for c in cols) and any("text" in c for c in cols), cols
    for r in rows:
        vals = [float(r[c]) for c in cols]
        assert all(math.isfinite(v) and v > 0 for v in vals)
        assert float(r["act_max"]) == max(vals)


def test_compiled_training_matches_eager(tmp_path: Path, fake_data: SimpleNamespace, float64: None) -> None:
    """``compile`` with ``compile_mode`` reduce-overhead (its CPU path: CUDA graphs need a GPU) trains the same
    model as eager; the mode is recorded in the run's config.

    In float64 (the point is the plumbing; see test_accumulation_equals_the_full_batch for why float32 Adam runs
    drift apart by host): the float32 losses agree to a few ulps. On the CPU: in bf16 autocast (a GPU's
    default) inductor keeps fused intermediates in float32 where eager rounds them to bf16 (H100, step 1: 1.7e-4
    relative)."""
    common = dict(steps=3, warmup=1, zeroshot="none", save_every=0, recipe="none", device="cpu")
    train(_cfg(tmp_path, "eager", **common))
    train(_cfg(tmp_path, "compiled", compile=True, compile_mode="reduce-overhead", **common))
    eager, compiled = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert eager.keys() == compiled.keys() == {1, 2, 3}
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], abs=1e-5), step
    assert "compile_mode: reduce-overhead" in (tmp_path / "compiled" / "config.yaml").read_text()


def test_compiled_quantize_inductor_trains_like_eager(tmp_path: Path, fake_data: SimpleNamespace) -> None:
    """SwitchBack compiled with ``compiled_quantize: inductor`` (the quantizers traced and fused) trains like
    eager SwitchBack, within a bound taken from the quantization itself; the process-wide mode is restored.

    The bound: eager and inductor compute LayerNorm, GELU and the rest in float32 with other roundings, so an
    int8 code whose input sits at a rounding boundary flips by one; each flip moves one activation by one
    quantization step (at most twice the rounding error int8 already makes there), and Adam turns the changed
    gradients into weight changes of at most lr per element and step. So the compiled run may differ from
    eager by less than quantization itself moves the loss: |L_compiled - L_eager| <= Q/2 per step, with
    Q = |L_switchback - L_float|, measured here on the same data and initial weights. A compiled run that lost its
    quantization (or its updates) sits about Q away. Observed: 2e-7, 5e-7, 4e-5 against Q = 1.4e-2, 3.2e-2,
    8.3e-3 (AVX-512 host); another host showed 1e-3 at step 3 (a 1e-4 relative bound failed there)."""
    from lowbit.kernels import ops

    common = dict(steps=3, warmup=1, zeroshot="none", save_every=0, device="cpu")
    train(_cfg(tmp_path, "float", **common))
    train(_cfg(tmp_path, "eager", recipe="switchback", **common))
    train(_cfg(tmp_path, "compiled", recipe="switchback", compile=True, compiled_quantize="inductor", **common))
    ref, eager, compiled = _losses(tmp_path / "float"), _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert eager.keys() == compiled.keys() == ref.keys() == {1, 2, 3}
    for step in eager:
        q = abs(eager[step] - ref[step])
        assert q > 1e-4, (step, q)  # quantization is visible at this size (else the bound means nothing)
        assert abs(compiled[step] - eager[step]) <= q / 2, (step, compiled[step], eager[step], q)
    assert "compiled_quantize: inductor" in (tmp_path / "compiled" / "config.yaml").read_text()
    assert ops.compiled_quantize() == "kernel"


def test_layers_auto_on_a_narrow_model_warns_and_trains_16bit(
    tmp_path: Path, fake_data: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    train(_cfg(tmp_path, steps=1, zeroshot="none", save_every=0, layers="auto", recipe="switchback-sim"))
    out, err = capsys.readouterr()
    assert "(0/" in out and "lowbit train: warning: layers='auto' leaves every linear" in err
    assert "lowbit train: layers auto: 0 of 10 linears in switchback-sim; 16-bit: not measured (cpu), width " in out


def test_layers_auto_measures_each_shape_at_the_process_batch_on_its_device(
    tmp_path: Path, fake_data: SimpleNamespace, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``layers="auto"`` hands the trainer's device and per-process batch to the measured filter (a fake
    measurement here, as if the CPU could measure): vision rows = batch × (grid² + 1), text = batch × context."""
    from lowbit.nn import autolayers

    seen: list[tuple[str, int, int, int]] = []

    def fake(recipe: object, device: torch.device, tokens: int, d_in: int, d_out: int, bias: bool = True):
        seen.append((torch.device(device).type, tokens, d_in, d_out))
        return 1.0, 0.5 if d_out != 4 * d_in else 2.0, "fake graphs"  # the MLPs' fc measures slower

    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(autolayers.ShapeTimer, "can_measure", property(lambda self: None))
    monkeypatch.setattr(autolayers, "measure_linear", fake)
    train(_cfg(tmp_path, steps=1, zeroshot="none", save_every=0, layers="auto", recipe="switchback-sim"))
    out = capsys.readouterr().out
    assert "(6/10 linears), layers auto" in out, out
    assert ("lowbit train: layers auto: 6 of 10 linears in switchback-sim; measured fwd+bwd vs bf16 on this device: "
            "80×32→96 2.00× 8-bit, 80×32→32 2.00× 8-bit, 80×32→128 0.50× 16-bit, 80×128→32 2.00× 8-bit, 384×32→96 "
            "2.00× 8-bit") in out, out
    assert "384×128→32 2.00× 8-bit; 16-bit: measured slower 2, module_filter 2\n" in out, out
    grid = SMALL["model"]["vision"]["image_size"] // SMALL["model"]["vision"]["patch_size"]
    batch, ctx = SMALL["batch_size"], SMALL["model"]["text"]["context_length"]
    assert {t for _, t, _, _ in seen} == {batch * (grid * grid + 1), batch * ctx}
    assert {d for d, _, _, _ in seen} == {"cpu"} and len(seen) == 8  # 4 shapes per tower, each once


@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="asks for more GPUs than this machine has")
def test_a_missing_gpu_is_named(tmp_path: Path, fake_data: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA device the machine lacks, alone or one per torchrun process, is a clear error before any work."""
    with pytest.raises(ValueError, match=r"device: cuda:1 asked for, but this machine has [01] CUDA device"):
        train(_cfg(tmp_path, "one", device="cuda:1"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match=r"LOCAL_RANK=1 needs its own GPU.*--nproc_per_node"):
        train(_cfg(tmp_path, "two", device="cuda"))
    assert not (tmp_path / "one").exists() and not (tmp_path / "two").exists()
