"""experiments/: every YAML config is a valid `lowbit train` config, the runners parse, and summarize.py turns
run directories into the right tables and plots (fake runs built here, with a known spike)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"


def _summarize_module():
    spec = importlib.util.spec_from_file_location("summarize", EXP / "summarize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("path", sorted(EXP.rglob("*.yaml")), ids=lambda p: str(p.relative_to(EXP)))
def test_configs_are_valid_train_configs(path: Path) -> None:
    import torch

    from lowbit.models import CLIP, get_config
    from lowbit.train import resolve_config

    cfg = resolve_config({}, str(path))
    with torch.device("meta"):
        CLIP(get_config(cfg.preset, **cfg.model))  # the model overrides validate and build


def test_runner_scripts_parse() -> None:
    for sh in sorted(EXP.glob("*.sh")):
        subprocess.run(["bash", "-n", str(sh)], check=True)


def _write_run(d: Path, losses: list[float], rms_spike_at: int | None, summary: dict | None, acts: bool = True) -> None:
    d.mkdir(parents=True)
    cols = ["step", "loss", "lr", "rms/visual.patch_embed.weight", "rms/text.proj.weight", "act/visual.blocks.0",
            "act/visual.blocks.1"]
    with (d / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i, loss in enumerate(losses, start=1):
            rms = 5.0 if i == rms_spike_at else 1.0
            w.writerow([i, loss, 1e-3, rms, 0.9, 2.0 + i * 0.1 if acts else "", 1.0])
    (d / "config.yaml").write_text("seed: 0\nrecipe: none\noptimizer: adamw\nbeta2: 0.99\nsteps: 100\n")
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))


def _summary(seed: int, final: float, zs: dict[str, float]) -> dict:
    return {"status": "finished", "final_loss": final, "final_loss_avg10": final, "zeroshot": zs,
            "chance": {t: 0.125 for t in zs}, "zeroshot_mean": sum(zs.values()) / len(zs), "samples_per_s": 10.0,
            "config": {"seed": seed, "recipe": "switchback", "optimizer": "adamw", "beta2": 0.99, "grad_clip": 0.0,
                       "lr": 1e-3, "steps": 60, "model": {}},
            "model_config": {"vision": {"width": 384}, "layer_scale_init": None}}


def test_summarize_tables_spikes_and_plots(tmp_path: Path) -> None:
    smooth = [3.0 - 0.01 * i + 0.001 * (i % 3) for i in range(60)]
    spiky = list(smooth)
    spiky[39] += 1.0  # step 40; RMS spike at step 37 -> lag 3
    root = tmp_path / "runs"
    _write_run(root / "grpA" / "seed0", spiky, 37, _summary(0, 2.5, {"colour": 0.6, "shape": 0.2}))
    _write_run(root / "grpA" / "seed1", smooth, None, _summary(1, 2.7, {"colour": 0.8, "shape": 0.2}))
    nan_run = smooth[:30]
    nan_run[-1] = float("nan")
    _write_run(root / "grpB" / "seed0", nan_run, None, None)
    out = tmp_path / "summary"
    data = _summarize_module().summarize([root], out, title="T")
    md = (out / "results.md").read_text()
    # mean ± sample s.d. over the two finished seeds: losses 2.5, 2.7; zero-shot means 0.4, 0.5
    assert "| grpA | switchback | width 384, adamw β2 0.99 | 2/2 | 2.6000 ± 0.1414 (n=2) | 45.0 ± 7.1% (n=2) |" in md
    assert "| grpB |" in md and "0/1" in md and "seed0@30/100 (non-finite loss)" in md
    g = {x["group"]: x for x in data["groups"]}
    assert g["grpA"]["spikes_per_run"] == [1, 0] and g["grpA"]["spikes_total"] == 1
    assert g["grpA"]["median_lag"] == 3 and g["grpA"]["first_precursor"] == "visual.patch_embed.weight"
    assert g["grpB"]["final_loss"] is None  # incomplete runs never enter the means
    run0 = next(r for r in data["runs"] if r["run"] == "grpA/seed0")
    assert run0["spikes"][0]["step"] == 40 and run0["act_max_peak"] == pytest.approx(2.0 + 60 * 0.1)
    for png in ("loss_curves.png", "spike_lags.png", "feature_magnitudes.png", "spikes_grpA.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png
        assert f"]({png})" in md
    assert "Zero-shot top-1 per task" in md and "| grpA | 70.0 ± 14.1 | 20.0 ± 0.0 |" in md



def test_summarize_merges_earlier_summaries(tmp_path: Path) -> None:
    """Runs of an earlier device call join the table from its summary.json; a new run of the same name wins."""
    smooth = [3.0 - 0.01 * i for i in range(60)]
    mod = _summarize_module()
    first = tmp_path / "call1"
    _write_run(first / "grpA" / "seed0", smooth, None, _summary(0, 2.5, {"colour": 0.6}))
    _write_run(first / "grpA" / "seed1", smooth[:20], None, None)  # cut by the budget in the first call
    mod.summarize([first], tmp_path / "s1", title="first", plots=False)
    second = tmp_path / "call2"
    _write_run(second / "grpA" / "seed1", smooth, None, _summary(1, 2.9, {"colour": 0.8}))
    _write_run(second / "grpA" / "seed2", smooth, None, _summary(2, 2.7, {"colour": 0.7}))
    mod.summarize([second], second / "summary", plots=False)  # an earlier output inside the root is no run
    out = tmp_path / "merged"
    data = mod.summarize([second], out, title="T", earlier=[tmp_path / "s1" / "summary.json"],
                         earlier_only=["grpA/*"])
    g = data["groups"][0]
    assert (g["runs"], g["finished"], g["incomplete"]) == (3, 3, [])  # the cut seed 1 was replaced
    assert g["final_loss"][0] == pytest.approx((2.5 + 2.9 + 2.7) / 3) and g["final_loss"][2] == 3
    runs = {r["run"]: r for r in data["runs"]}
    assert runs["grpA/seed0"]["source"].endswith("summary.json") and "source" not in runs["grpA/seed1"]
    assert len(runs["grpA/seed0"]["loss_curve"]) == 60  # restored from the earlier summary, kept for the next
    md = (out / "results.md").read_text()
    assert "seed 0: 2.500 / 60.0%; seed 1: 2.900 / 80.0%; seed 2: 2.700 / 70.0%" in md
    assert "Runs taken from earlier summaries" in md and "`grpA/seed0`" in md
    assert (out / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    none = mod.summarize([second], tmp_path / "m2", plots=False, earlier=[tmp_path / "s1" / "summary.json"],
                         earlier_only=["other/*"])
    assert none["groups"][0]["runs"] == 2

def test_run_jobs_budget_and_timeout(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.tsv"
    jobs.write_text("a\ttrue\nb\tsleep 30\nc\tfalse\n# comment\nd\ttrue\n")
    log = tmp_path / "log.tsv"
    subprocess.run(["python3", str(EXP / "run_jobs.py"), str(jobs), "--parallel", "2", "--budget", "6",
                    "--job-timeout", "2", "--min-start", "0.5", "--log", str(log)], check=True, timeout=60)
    status = {r["name"]: r["status"] for r in csv.DictReader(log.open(), delimiter="\t")}
    assert status == {"a": "ok", "b": "timeout", "c": "failed rc=1", "d": "ok"}
    assert (tmp_path / "logs" / "b.log").is_file()


def test_summarize_compares_with_a_baseline(tmp_path: Path) -> None:
    """--baseline: Welch's t-test of each group against the baseline on final loss and zero-shot, per-seed deltas."""
    smooth = [3.0 - 0.01 * i for i in range(40)]
    root = tmp_path / "fmnist"
    finals = {"bf16": (2.50, 2.52, 2.48), "same": (2.51, 2.49, 2.53), "worse": (2.80, 2.82, 2.78)}
    accs = {"bf16": (0.80, 0.82, 0.78), "same": (0.79, 0.83, 0.80), "worse": (0.60, 0.62, 0.61)}
    for group in finals:
        for seed in range(3):
            _write_run(root / group / f"seed{seed}", smooth, None,
                       _summary(seed, finals[group][seed], {"fashion-mnist": accs[group][seed]}))
    _write_run(root / "cut" / "seed0", smooth[:10], None, None)  # no finished seed: no verdict
    out = root / "summary"
    data = _summarize_module().summarize([root], out, title="T", baseline="bf16", smooth=5)
    assert data["groups"][0]["group"] == "bf16"  # the baseline first
    cmp = {c["group"]: c for c in data["comparison"]}
    assert set(cmp) == {"same", "worse", "cut"}
    same, worse = cmp["same"]["final_loss"]["test"], cmp["worse"]["zeroshot_mean"]["test"]
    assert same["within"] and same["diff"] == pytest.approx(0.01) and same["df"] == pytest.approx(4.0)
    assert same["t_crit"] == 2.776 and same["t"] == pytest.approx(0.01 / math.sqrt(2 * 0.0004 / 3))
    assert not worse["within"] and worse["diff"] == pytest.approx(-0.19) and cmp["worse"]["within"] is False
    assert cmp["same"]["within"] is True and cmp["cut"]["within"] is None
    assert cmp["worse"]["final_loss"]["paired"] == pytest.approx({0: 0.30, 1: 0.30, 2: 0.30})
    md = (out / "results.md").read_text()
    assert "| worse | 61.0 ± 1.0 (n=3) | 80.0 ± 2.0 (n=3) | -19.0 pp |" in md and "**outside seed noise**" in md
    assert "- `same`: within seed noise of `bf16` (final loss Δ +0.0100, |t| 0.61 ≤ 2.78;" in md
    assert "- `worse`: **not** within seed noise of `bf16`" in md and "- `cut`: not enough finished seeds" in md
    for png in ("loss_curves.png", "final_per_seed.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in md
    with pytest.raises(SystemExit, match="no such group"):
        _summarize_module().summarize([root], tmp_path / "x", baseline="fp32", plots=False)


def test_t_quantiles_and_welch_edge_cases() -> None:
    mod = _summarize_module()
    assert mod.t975(4.0) == 2.776 and mod.t975(4.9) == 2.776 and mod.t975(0.3) == 12.706 and mod.t975(100) == 2.0
    assert mod.welch([1.0], [1.0, 2.0]) is None
    assert mod.welch([1.0, 1.0], [1.0, 1.0])["within"] is True
    assert mod.welch([1.0, 1.0], [2.0, 2.0])["within"] is False


def _fake_fashion_mnist_idx(src: Path) -> Path:
    """A fake Fashion-MNIST as the Debian package has it (gzipped IDX files: 48 training and 20 test images, each
    a flat grey level per class) in ``src``; returns ``src``."""
    import gzip
    import struct

    import numpy as np

    src.mkdir()
    for split, n in (("train", 48), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = np.stack([np.full((28, 28), 20 + 23 * int(y), np.uint8) for y in labels])
        for name, a in ((f"{split}-images-idx3-ubyte.gz", images), (f"{split}-labels-idx1-ubyte.gz", labels)):
            header = struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
            (src / name).write_bytes(gzip.compress(header + a.astype(np.uint8).tobytes()))
    return src


def test_run_fmnist_end_to_end_on_cpu(tmp_path: Path) -> None:
    """experiments/run_fmnist.sh with a tiny model on a fake Fashion-MNIST (IDX files as the Debian package has
    them): prepares the data, trains through the fused path, evaluates zero-shot, summarizes against bf16."""
    import os
    import sys

    src = _fake_fashion_mnist_idx(tmp_path / "idx")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PY": sys.executable, "DATA": str(tmp_path / "fmnist"),
           "SOURCE": str(src), "DEVICE": "cpu", "PRESET": "tiny", "STEPS": "2", "BATCH": "8", "WARMUP": "1",
           "SEEDS": "0 1", "RECIPES": "bf16 switchback", "PARALLEL": "2", "WORKERS": "1", "BUDGET": "300",
           "EXTRA": "--set model.vision.layers=1 --set model.text.layers=1"}
    res = subprocess.run(["bash", str(EXP / "run_fmnist.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    d = out / "fmnist"
    status = {r["name"]: r["status"] for r in csv.DictReader((d / "jobs.tsv").open(), delimiter="\t")}
    assert status == {f"{r}/seed{s}": "ok" for r in ("bf16", "switchback") for s in (0, 1)}, status
    run = json.loads((d / "switchback" / "seed1" / "summary.json").read_text())
    assert run["config"]["fuse"] is True and run["config"]["save_every"] == -1 and run["config"]["seed"] == 1
    assert run["zeroshot"].keys() == {"fashion-mnist"} and run["chance"]["fashion-mnist"] == 0.1
    assert not list(d.rglob("checkpoint*.pt"))
    assert "fused (2 MLPs, 4 LayerNorms)" in (d / "logs" / "switchback_seed1.log").read_text()
    md = (d / "summary" / "results.md").read_text()
    assert "Against `bf16`" in md and "| switchback |" in md and "prepared" in (out / "env.txt").read_text()
    assert (d / "summary" / "final_per_seed.png").is_file() and "Against `bf16`" in res.stdout


def _summarize_paper_module():
    spec = importlib.util.spec_from_file_location("summarize_paper", EXP / "summarize_paper.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _paper_run(d: Path, seed: int, final: float, top1: float, ips: float, mfu: float | None = None,
               losses: list[float] | None = None, rms_spike_at: int | None = None, recipe: str | None = None,
               model: str = "tiny", **cfg) -> None:
    """A finished run as the trainer writes it (batch 8 on an H100), with throughput fields."""
    from lowbit.models import get_config

    _write_run(d, losses or [3.0 - 0.01 * i for i in range(60)], rms_spike_at, None, acts=False)
    summary = _summary(seed, final, {"fashion-mnist": top1})
    summary["config"].update({"recipe": recipe or d.parent.name, "optimizer": "stableadamw", "beta2": 0.98, **cfg})
    summary.update({"samples_per_s_steady": ips, "device": "NVIDIA H100 80GB HBM3", "global_batch": 8,
                    "samples_seen": 480, "peak_memory_gb": 2.0, "model_config": get_config(model).to_dict()})
    if mfu is not None:
        summary["mfu_steady"] = mfu
    (d / "summary.json").write_text(json.dumps(summary))


def test_summarize_paper_table_speed_and_plots(tmp_path: Path) -> None:
    """summarize_paper.py: the recipe table against bf16 with paired per-seed deltas and Welch's verdict, tokens/s
    and MFU (the trainer's mfu_steady, else computed from the FLOPs and the device's peak), the call's aggregate
    images/s from jobs.tsv, the layer-scale and spike tables, and the three plots."""
    root = tmp_path / "runs"
    for seed, (f, z) in enumerate(((2.50, 0.80), (2.60, 0.70))):
        _paper_run(root / "main" / "bf16" / f"seed{seed}", seed, f, z, 1000.0, model="vit-b-32")
    for seed, (f, z) in enumerate(((2.52, 0.78), (2.58, 0.72))):
        _paper_run(root / "main" / "switchback" / f"seed{seed}", seed, f, z, 900.0, mfu=0.25)
    _paper_run(root / "ls-lr2e-3" / "bf16-lsnone" / "seed0", 0, 3.0, 0.3, 800.0, lr=2e-3)
    _paper_run(root / "ls-lr2e-3" / "fp8-tensorwise-ls0" / "seed0", 0, 2.9, 0.4, 800.0, recipe="fp8-tensorwise",
               lr=2e-3)
    _paper_run(root / "ls-lr1e-3" / "bf16-lsnone" / "seed0", 0, 2.8, 0.5, 800.0, lr=1e-3)
    smooth = [3.0 - 0.01 * i + 0.001 * (i % 3) for i in range(60)]
    spiky = list(smooth)
    spiky[39] += 1.0  # step 40, RMS spike at step 37: lag 3
    _paper_run(root / "spike" / "adamw" / "seed0", 0, 2.7, 0.5, 700.0, losses=spiky, rms_spike_at=37,
               recipe="none", optimizer="adamw", lr=2e-3, beta2=0.99)
    _paper_run(root / "spike" / "stableadamw" / "seed0", 0, 2.6, 0.6, 700.0, losses=smooth, recipe="none", lr=2e-3,
               beta2=0.99)
    jobs = root / "jobs.tsv"  # the first call: 8 of the 9 runs (one cut by the budget), one job never started
    names = sorted(str(p.parent.relative_to(root)) for p in root.rglob("summary.json"))
    rows = [f"{n}\t{'timeout' if n == 'spike/adamw/seed0' else 'ok'}\t90.0\t{30.0 * (i % 2)}" for i, n in
            enumerate(n for n in names if n != "main/switchback/seed1")]
    jobs.write_text("\n".join(["name\tstatus\tseconds\tstart_s", *rows, "ls/x/seed1\tskipped (budget)\t0.0\t119.0"]))
    later = root / "jobs-seed1.tsv"  # a second call ran the ninth
    later.write_text("name\tstatus\tseconds\tstart_s\nmain/switchback/seed1\tok\t40.0\t0.0\n")
    out = tmp_path / "summary"
    data = _summarize_paper_module().report(root, out, title="T", jobs=[jobs, later])
    md = (out / "results.md").read_text()
    # switchback - bf16 per seed: loss +0.02, -0.02 (mean 0, s.d. 0.0283); top-1 -2, +2 pp; Welch: within noise
    assert ("| switchback | switchback | 2/2 | 2.5500 ± 0.0424 | +0.0000 ± 0.0283 (+0.0200, -0.0200) | "
            "75.0 ± 4.2 | +0.0 ± 2.8 (-2.0, +2.0) | within seed noise | 900 ± 0 | 84600 ± 0 | 25.00 ± 0.00% | "
            "2.0 ± 0.0 |") in md  # tiny: 4x4 patches + class token + 77 text tokens = 94 tokens per image
    # ViT-B/32: 7x7 patches + 1 + 77 = 127 tokens; 44.11 GFLOP per image x 1000/s over the H100's 989.4 TFLOP/s
    assert "| 1000 ± 0 | 127000 ± 0 | 4.46 ± 0.00% |" in md and md.index("| bf16 |") < md.index("| switchback |")
    # each call's own runs over its own span: 8 x 480 images from the first start (0 s) to the last end (120 s),
    # then the second call's one run in 40 s
    assert "The call of `jobs.tsv`: 7 of 9 jobs finished (1 cut by the budget, 1 not started); " \
           f"{8 * 480:,} images trained in 120 s = 32 images/s" in md
    assert "The call of `jobs-seed1.tsv`: 1 of 1 jobs finished (0 cut by the budget, 0 not started); 480 images " \
           "trained in 40 s = 12 images/s" in md
    assert "### Layer-scale at lr 0.002" in md and "| fp8-tensorwise-ls0 | fp8-tensorwise | 1/1 |" in md
    assert md.index("### Layer-scale at lr 0.001") < md.index("### Layer-scale at lr 0.002")  # parts by lr
    assert "| -0.1000 ± 0.0000 (-0.1000) | 40.0 ± 0.0 (n=1) | +10.0 ± 0.0 (+10.0) | too few seeds |" in md
    assert "| adamw | lr 0.002, β2 0.99 | 1 | 1/1 | 3 | visual.patch_embed.weight |" in md
    assert "| stableadamw | lr 0.002, β2 0.99 | 0 | 0/0 | — |" in md
    for png in ("loss_curves.png", "zeroshot.png", "spike.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in md
    for part in ("main", "ls-lr1e-3", "ls-lr2e-3", "spike"):
        assert (out / part / "results.md").is_file()
    assert data["speed"]["main"]["switchback"][1]["mfu"] == 0.25
    assert [a["samples"] for a in data["aggregate"]] == [8 * 480, 480]
    assert data["comparison"]["main"][0]["group"] == "switchback"
    with pytest.raises(SystemExit, match="no runs under"):
        _summarize_paper_module().report(tmp_path / "empty", tmp_path / "x")


def test_run_paper_end_to_end_on_cpu(tmp_path: Path) -> None:
    """experiments/run_paper.sh at tiny size on a fake Fashion-MNIST carried as a prepared .tar.gz: every part
    runs (recipe table, layer-scale with --activations, a spike run with --monitor), and with PACK=1 OUT holds
    only what a device call brings back (at most 8 files, none in a folder) with every run's files in the tar."""
    import os
    import sys
    import tarfile

    src = _fake_fashion_mnist_idx(tmp_path / "idx")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, "-m", "lowbit", "data", "prepare", "fashion-mnist", "--source", str(src),
                    "--out", str(tmp_path / "fmnist")], check=True, env=env, capture_output=True, timeout=300)
    with tarfile.open(tmp_path / "fmnist.tar.gz", "w:gz") as t:
        t.add(tmp_path / "fmnist", arcname="fmnist")
    out, runs = tmp_path / "out", tmp_path / "runs"
    env.update({"OUT": str(out), "RUNS": str(runs), "PACK": "1", "PY": sys.executable,
                "DATA": str(tmp_path / "unpacked"), "DATA_TGZ": str(tmp_path / "fmnist.tar.gz"), "DEVICE": "cpu",
                "PRESET": "tiny", "STEPS": "2", "BATCH": "8", "WARMUP": "1", "SEEDS": "0",
                "RECIPES": "bf16 switchback", "LS_SETTINGS": "2e-3:bf16:0", "SPIKE_OPTIMIZERS": "adamw", "PARALLEL": "2",
                "BUDGET": "400", "MIN_START": "5", "ZEROSHOT_LIMIT": "20",
                "EXTRA": "--set model.vision.layers=1 --set model.text.layers=1"})
    res = subprocess.run(["bash", str(EXP / "run_paper.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    status = {r["name"]: r["status"] for r in csv.DictReader((runs / "jobs.tsv").open(), delimiter="\t")}
    names = ["main/bf16/seed0", "main/switchback/seed0", "ls-lr2e-3/bf16-ls0/seed0", "spike/adamw/seed0"]
    assert status == dict.fromkeys(names, "ok"), status
    ls = json.loads((runs / "ls-lr2e-3/bf16-ls0/seed0/summary.json").read_text())
    assert ls["config"]["model"]["layer_scale_init"] == 0 and ls["config"]["activations"] is True
    assert ls["config"]["lr"] == 2e-3 and ls["recipe"] == "none" and ls["compiled"].startswith("eager")
    spike = json.loads((runs / "spike/adamw/seed0/summary.json").read_text())
    assert spike["config"]["optimizer"] == "adamw" and spike["config"]["beta2"] == 0.99 and spike["config"]["monitor"]
    assert spike["config"]["lr"] == 1.5e-3 and spike["config"]["steps"] == 2 and spike["config"]["warmup"] == 1
    assert "unpacked" in (out / "env.txt").read_text()
    files = sorted(p.name for p in out.iterdir())
    assert all((out / f).is_file() for f in files) and len(files) <= 8, files
    assert {"results.md", "paper-runs.tar.gz", "loss_curves.png", "zeroshot.png", "spike.png"} <= set(files)
    with tarfile.open(out / "paper-runs.tar.gz") as t:
        members = set(t.getnames())
    for n in names:
        for f in ("metrics.csv", "eval.csv", "summary.json"):
            assert f"runs/{n}/{f}" in members, (n, f)
    assert not any("tensorboard" in m for m in members) and "runs/summary/main/results.md" in members
    md = (out / "results.md").read_text()
    assert "| switchback | switchback | 1/1 |" in md and "### Loss spikes" in md and "### Layer-scale at lr 0.002" in md
