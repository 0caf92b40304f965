"""``bench/multi_gpu.py`` (the 4-GPU benchmark of ``lowbit train``): its ``--dry`` CPU smoke test (the resume stage
on gloo, with the noise control; Fashion-MNIST shards prepared from IDX stand-ins, the data probe, and a second call
that takes the first one's stages through ``--baseline``), and its report's arithmetic on made-up runs."""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "multi_gpu.py"
needs_gloo = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def _module():
    spec = importlib.util.spec_from_file_location("multi_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["multi_gpu"] = mod  # dataclasses look the module up
    spec.loader.exec_module(mod)
    return mod


mg = _module()


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry", *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.mark.slow
@needs_gloo
def test_dry_run_resume_stage(tmp_path: Path) -> None:
    _run("--only", "resume", "--out", str(tmp_path))
    md = (tmp_path / "multi_gpu.md").read_text()
    assert "steps 1-3 identical; steps 4-6 max |dloss|" in md, md
    d = float(md.split("steps 4-6 max |dloss| ")[1].split()[0])
    assert d <= 1e-5  # fp32 on the CPU: only reduction orders differ between 1 and 2 processes
    # the noise control: two identical 2-process runs on the CPU are bit-identical
    assert "- noise control: two uninterrupted 2-GPU runs (same seed) differ by max |dloss| 0 over steps 4-6" in md, md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multi_gpu.json", "multi_gpu.md", "runs.tar.gz"]
    jobs = {j["name"]: j for j in json.loads((tmp_path / "multi_gpu.json").read_text())["jobs"]}
    assert {n: j["rc"] for n, j in jobs.items()} == {"resume-ref-2": 0, "resume-a-2": 0, "resume-ref2-2": 0,
                                                      "resume-b-1": 0, "resume-c-2": 0, "resume-ref-1": 0,
                                                      "resume-d-2": 0}
    # resumed at the same world size: bit-identical (fp32 on the CPU, one reduction order)
    assert "- resumed on 2 GPUs (stopped at step 3, same world size): steps 1-6 bit-identical to the reference" in md
    assert "- world-size control: an uninterrupted 1-GPU run" in md, md
    assert jobs["resume-d-2"]["summary"]["step"] == 6 and jobs["resume-d-2"]["summary"]["world_size"] == 2
    assert jobs["resume-b-1"]["summary"]["step"] == 6 and jobs["resume-b-1"]["summary"]["world_size"] == 1
    assert all(j["env"] == {"LOWBIT_FP8_MATMUL": "triton"} for j in jobs.values())


@pytest.mark.slow
@needs_gloo
def test_dry_run_fmnist_in_two_calls(tmp_path: Path) -> None:
    src = tmp_path / "idx"  # stand-ins for .data/fashion-mnist
    src.mkdir()
    for split, n in (("train", 24), ("t10k", 10)):
        labels = np.arange(n) % 10
        _idx(src / f"{split}-images-idx3-ubyte.gz", np.stack([np.full((28, 28), 20 * y, np.uint8) for y in labels]))
        _idx(src / f"{split}-labels-idx1-ubyte.gz", labels)
    prepared, one, two = tmp_path / "fmnist", tmp_path / "one", tmp_path / "two"
    data = ["--data", "fmnist", "--fmnist-source", str(src), "--fmnist-dir", str(prepared)]
    _run(*data, "--probe", "data", "--only", "1", "--out", str(one))
    assert (prepared / "manifest.json").is_file()
    md = (one / "multi_gpu.md").read_text()
    assert f"Data: {prepared} prepared from {src}" in md, md
    assert "the data probe's" in md and "this call's stage 0" in md, md
    first = json.loads((one / "multi_gpu.json").read_text())
    assert first["probe"]["data"]["images_per_s"] > 0 and first["probe"]["data"]["data"] == str(prepared)
    assert {j["summary"]["config"]["data"] for j in first["jobs"]} == {str(prepared)}
    assert [j["rc"] for j in first["jobs"]] == [0, 0, 0, 0]
    assert sorted(p.name for p in one.iterdir()) == ["multi_gpu.json", "multi_gpu.md", "runs.tar.gz"]
    with tarfile.open(one / "runs.tar.gz") as tar:
        assert "runs/prepare-fmnist.log" in tar.getnames()
    # the second call: no preparation (found), the 1-GPU rows and the data rate from the first call
    _run(*data, "--only", "cudagraphs", "--baseline", str(one / "multi_gpu.json"), "--out", str(two))
    md = (two / "multi_gpu.md").read_text()
    assert f"{prepared} found prepared" in md and "the baseline's stage 0" in md, md
    # the note column: "baseline", after "data?" where the trainer's steps waited for data (its data wait)
    assert sum(1 for line in md.splitlines() if line.startswith("| ") and line.rstrip().endswith("baseline |")) == 4, md
    second = json.loads((two / "multi_gpu.json").read_text())
    assert [j["origin"] for j in second["jobs"]] == ["multi_gpu.json"] * 4 + ["", ""]
    assert second["probe"] == first["probe"]


# --- the report on made-up runs -------------------------------------------------------------------------------------


def _args(**kw) -> argparse.Namespace:
    a = argparse.Namespace(dry=False, gpus=4, steps=14, compile=False, serial=False, batch_b=256, batch_l=128,
                           data="fmnist", data_kind="fmnist", data_spec=".data/fmnist", max_workers=14, prepared="",
                           recipe8="switchback", resume_recipe="bf16", resume_batch=64)
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def _job(name: str, stage: str, model: str, recipe: str, nproc: int, parallel: str, ips: float | None,
         losses: list[float] | None = None, **kw) -> mg.Job:
    summary = None if ips is None else {"samples_per_s_steady": ips, "global_batch": 256 * nproc, "device": "H100",
                                        "config": {"workers": 14, "data": ".data/fmnist"}, "data_wait_frac": 0.0,
                                        "mfu_steady": None}
    return mg.Job(name, stage, model, recipe, nproc, parallel, rc=0, seconds=30.0, summary=summary,
                  losses=losses or [], **kw)


def _row(md: str, start: str) -> list[str]:
    line = next(line for line in md.splitlines() if line.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


def test_stage_order_follows_only() -> None:
    a = _args()
    jobs = mg.build_jobs(a)
    assert [j.name for j in jobs if j.stage == "resume"] == ["resume-ref-2", "resume-a-2", "resume-ref2-2",
                                                             "resume-b-1", "resume-c-2", "resume-ref-1",
                                                             "resume-d-2"]
    stages = [j.stage for j in mg.select(jobs, "cudagraphs, resume,2", a)]
    assert stages == ["cudagraphs"] * 2 + ["resume"] * 7 + ["2 GPUs"] * 6
    assert mg.stage_name("big", a) == mg.stage_name("4", a) == "4 GPUs"
    assert mg.stage_name("2", _args(gpus=2)) == "2 GPUs"  # two GPUs: "2" is the big stage
    twins = [j for j in jobs if j.name.endswith(("-ag8", "-ag16"))]
    assert len(twins) == 4 and all(j.env == {"LOWBIT_FP8_MATMUL": "triton"} for j in twins)
    with pytest.raises(SystemExit, match="unknown stage"):
        mg.stage_name("3", a)


def test_models_filter() -> None:
    jobs = mg.build_jobs(_args(gpus=2))
    only_b = mg.of_models(jobs, "b")
    assert only_b and all(j.model == "B" for j in only_b)
    assert {j.stage for j in only_b} == {j.stage for j in jobs}  # the resume and graphs checks are ViT-B/32
    assert [j.name for j in mg.of_models(jobs, "B, L")] == [j.name for j in jobs]
    assert all(j.model == "L" for j in mg.of_models(jobs, "L"))
    with pytest.raises(ValueError, match="--models H"):
        mg.of_models(jobs, "H")


def test_data_rate_uses_the_probe() -> None:
    probe = {"data": {"workers": 14, "images_per_s": 7980.0, "per_worker": 570.0}}
    assert mg.data_rate(probe, "synthetic", 14) == 7980.0  # measured, whatever the data kind
    assert mg.data_rate(probe, "fmnist", 7) == 570.0 * 7  # scaled per worker
    assert mg.data_rate({}, "synthetic", 14) == 141.0 * 14  # no probe: the assumed rate
    assert mg.data_rate({"data": None}, "other", 14) is None
    assert mg.json_line("noise\n{\"a\": 1}\nwarning: x\n") == {"a": 1} and mg.json_line("no json") is None


def test_report_scaling_from_a_baseline_and_the_data_flag(tmp_path: Path) -> None:
    first = [_job("B-bf16-1", "1 GPU", "B", "bf16", 1, "none", 3200.0),
             _job("L-bf16-1", "1 GPU", "L", "bf16", 1, "none", 500.0)]
    path = tmp_path / "multi_gpu.json"
    path.write_text(json.dumps({"args": {"data": "fmnist", "batch_b": 256, "batch_l": 128, "steps": 14},
                                "probe": {"data": {"workers": 14, "images_per_s": 3500.0, "per_worker": 250.0}},
                                "jobs": [mg.job_record(j) for j in first]}))
    mine = [_job("B-bf16-ddp2", "2 GPUs", "B", "bf16", 2, "ddp", 6000.0),  # 3000 per GPU: above 0.8 x 3500
            _job("L-bf16-ddp2", "2 GPUs", "L", "bf16", 2, "ddp", 900.0)]
    extra, baseline = mg.load_baseline(path, {"2 GPUs"})
    assert [j.origin for j in extra] == ["multi_gpu.json"] * 2
    md = mg.report(extra + mine, _args(), 100.0, {}, baseline)
    assert "the baseline's stage 0" in md and "other data" not in md, md
    assert _row(md, "| B | bf16 | 2 |")[7] == "93.8%" and _row(md, "| B | bf16 | 2 |")[-1] == "data?"
    assert _row(md, "| L | bf16 | 2 |")[7] == "90.0%" and _row(md, "| L | bf16 | 2 |")[-1] == ""
    assert _row(md, "| B | bf16 | 1 |")[-1] == "data? baseline"  # 3200 > 0.8 x 3500
    # this call's probe wins over the baseline's; another data kind's probe is not used
    md = mg.report(extra + mine, _args(), 100.0, {"data": {"workers": 14, "images_per_s": 9000.0}}, baseline)
    assert "this call's stage 0" in md and _row(md, "| B | bf16 | 2 |")[-1] == ""
    md = mg.report(extra + mine, _args(data="synthetic", data_kind="synthetic"), 100.0, {}, baseline)
    assert "an assumed 141.0 img/s per worker" in md and "**other data or batch**" in md, md


def test_report_uses_only_the_fixed_clock_and_the_trainers_data_wait() -> None:
    """A summary from before the trainer's clock was fixed (no ``data_wait_frac``: issue 27) gives no images/s and
    no ratio; the trainer's own data wait flags a data-bound run; MFU is the trainer's."""
    one = _job("B-bf16-1", "1 GPU", "B", "bf16", 1, "none", 3200.0)
    stale = _job("B-bf16-ddp2", "2 GPUs", "B", "bf16", 2, "ddp", 6000.0)
    del stale.summary["data_wait_frac"]
    waits = _job("L-bf16-1", "1 GPU", "L", "bf16", 1, "none", 500.0)
    waits.summary.update(data_wait_frac=0.25, mfu_steady=0.412)
    md = mg.report([one, stale, waits], _args(), 100.0, {"data": {"workers": 14, "images_per_s": 1e9}}, None)
    row = _row(md, "| B | bf16 | 2 |")
    assert row[5] == "-" and row[7] == "" and row[-1] == "stale clock", row
    row = _row(md, "| L | bf16 | 1 |")
    assert row[9] == "41.2" and row[10] == "25.0" and row[-1] == "data?", row
    assert _row(md, "| B | bf16 | 1 |")[-1] == ""


@pytest.mark.parametrize(("ref2", "verdict"), [
    ([5.0, 4.9, 4.8, 4.7, 4.6, 4.5], "the two references are bit-identical, the resumed run is not"),
    ([5.0, 4.9, 4.8, 4.703, 4.6, 4.5], "within the run-to-run noise (0.67x the references' difference)"),
    ([5.0, 4.9, 4.8, 4.7005, 4.6, 4.5], "4.0x the references' difference: more than run-to-run noise"),
])
def test_resume_noise_control(ref2: list[float], verdict: str) -> None:
    ref = [5.0, 4.9, 4.8, 4.7, 4.6, 4.5]
    resumed = [5.0, 4.9, 4.8, 4.702, 4.6, 4.5]
    jobs = [_job("resume-ref-2", "resume", "B", "bf16", 2, "fsdp", 100.0, ref),
            _job("resume-ref2-2", "resume", "B", "bf16", 2, "fsdp", 100.0, ref2),
            _job("resume-b-1", "resume", "B", "bf16", 1, "none", 50.0, resumed)]
    text = "\n".join(mg.resume_lines({j.name: j for j in jobs}))
    assert "steps 1-3 identical; steps 4-6 max |dloss| 0.002" in text, text
    assert verdict in text, text


def test_report_cuda_graphs_pair(tmp_path: Path) -> None:
    eager = _job("cg-ddp2-eager", "cudagraphs", "B", "bf16", 2, "ddp", 2000.0, [5.0, 4.0, 3.0])
    graphs = _job("cg-ddp2-graphs", "cudagraphs", "B", "bf16", 2, "ddp", 3600.0, [5.0, 4.004, 3.0],
                  replica_note="DDP with CUDA graphs: the ranks' parameters are compared after each of the first 10 "
                               "steps and at every checkpoint")
    md = mg.report([eager, graphs], _args(gpus=2), 100.0, {}, None)
    assert "max relative |dloss| vs eager 0.001; images/s 3600 vs eager 2000" in md, md
    assert "- replica check: DDP with CUDA graphs: the ranks' parameters are compared" in md
    assert "; passed (the run finished)" in md
    graphs.replica_note = ""
    assert "- replica check: no note in the log (not on)" in mg.report([eager, graphs], _args(gpus=2), 1.0, {}, None)
    # the note is read from the run's log
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "cg-ddp2-graphs.log").write_text("lowbit train: ...\nDDP with CUDA graphs: the ranks' x\n")
    mg.collect(graphs, tmp_path)
    assert graphs.replica_note == "DDP with CUDA graphs: the ranks' x"
