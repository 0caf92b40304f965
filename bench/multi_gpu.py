#!/usr/bin/env python3
"""Multi-GPU measurement of ``lowbit train`` (issue 19) on 4 H100s, in one or two device calls of under ~500 s.

What it runs (eager unless ``--compile``, no checkpoints except the resume check), stage by stage:

0. what bounds the runs before the model does: ``nvidia-smi topo -m``, NCCL bus bandwidth on all and on 2 GPUs,
   and the DataLoader's images/s with one rank's workers (``bench/probes/multi_gpu_probe.py``; ``--probe data``:
   only the last);
1. ``1``: one GPU: ViT-B/32 (256 per GPU) and ViT-L/14 (128 per GPU), bf16 and the 8-bit recipe (``--recipe8``,
   default switchback) — four single-GPU runs side by side, one per GPU (``--serial``: one at a time);
2. ``big``: all GPUs: DDP for both models and both recipes; FSDP2 for ViT-L/14 (bf16, 8-bit recipe with and
   without the 8-bit weight all-gather; the twins run with ``LOWBIT_FP8_MATMUL=triton`` so that no per-process
   cuBLAS/Triton timing choice separates their step-1 losses where the recipe uses fp8);
3. ``resume``: the cross-world-size resume (NCCL): ViT-B/32 on 2 GPUs to step 6 uninterrupted, twice (same seed:
   the run-to-run noise floor on the GPUs, where autotuning and atomics make runs not bit-reproducible), beside
   the same run stopped at step 3 and resumed on 1 GPU (``--resume``: the global batch is kept): losses of steps
   4-6 compared, resumed vs reference against reference vs reference (``LOWBIT_FP8_MATMUL=triton`` pinned);
4. ``2``: two GPUs: DDP for both models and recipes, FSDP2 ViT-L/14 8-bit with and without the 8-bit all-gather
   (two 2-GPU runs side by side on GPUs 0,1 and 2,3);
5. ``cudagraphs``: CUDA graphs with DDP (2 GPUs, ViT-B/32 bf16, ``--compile --compile-mode reduce-overhead``; the
   trainer checks after each of the first 10 steps that the ranks' parameters agree) beside the same run eager: does
   it run, do the losses agree (bf16 level), how fast.

Data (``--data``): ``fmnist`` trains on Fashion-MNIST shards prepared once from the IDX files carried in
``.data/fashion-mnist`` (``lowbit data prepare fashion-mnist`` into ``.data/fmnist``, ~11 s, skipped where
``.data/fmnist/manifest.json`` exists; done while the NCCL probes run): the 2xH100 host's stage 0 measured 294 images/s per worker with float32
transport (4109 with 14 workers), where ``synthetic`` rendered ~141 per worker on the 4xH100 host and bound ViT-B/32
there; since then stored images travel as uint8 (3.1x the float32 rate with 2 workers on the 2-core development CPU,
``bench/results/cpu/loader-fmnist.md``; 15402 images/s with 14 workers on the 2xH100 host). ``auto`` (default): ``fmnist``
on GPUs where the IDX files (or the prepared folder) are present, else ``synthetic``. Any other value is passed to
``lowbit train --data`` as is.

Steady-state images/s come from each run's ``summary.json`` (``samples_per_s_steady``: steps after the first 5);
peak memory is rank 0's. The "data?" flag uses stage 0's measured DataLoader rate (per rank, at the runs' worker
count). Runs are skipped once ``--budget`` seconds (from the start, stage 0 included) have passed, so the table
always comes out. Writes ``OUT/multi_gpu.md``, ``OUT/multi_gpu.json`` and ``OUT/runs.tar.gz`` (each run's log,
``metrics.csv``, ``summary.json`` and ``config.yaml``) and nothing else.

Two calls (``--only`` runs the listed stages in that order; ``--baseline`` takes the stages not run from an
earlier call's ``multi_gpu.json``: the scaling efficiencies of the 2-GPU stage use its 1-GPU rows, the data rate
its stage 0, and the report and JSON hold both calls' rows):

    python3 bench/multi_gpu.py --out "$OUT" --data fmnist --only 1,big                       # call 1, ~420 s
    cp CALL1/multi_gpu.json .data/multi_gpu-1.json          # where call 1's files came back; carried with .data
    python3 bench/multi_gpu.py --out "$OUT" --data fmnist --only resume,2,cudagraphs --probe none \\
        --baseline .data/multi_gpu-1.json                                                    # call 2, ~400 s

(the CUDA-graphs pair comes last in call 2: a hang there costs only itself). One call runs every stage (~800 s:
over a 10-minute device command; ``--budget`` then skips what does not fit):

    python3 bench/multi_gpu.py --out "$OUT"                 # the 4-GPU machine, repo root as cwd
    python3 bench/multi_gpu.py --out /tmp/mg --dry          # CPU smoke test: tiny model, gloo, <= 2 procs

NVLink multicast stays off (KINDS.md): NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
are set for every run unless already set.

This file holds the jobs and their scheduling; beside it, ``multi_gpu_stage0.py`` (the data, stage 0, the runs'
environment) and ``multi_gpu_report.py`` (the table and checks, from the honest clock only: issue 27).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its two modules beside this script
from multi_gpu_report import (
    PIN_FP8,
    RATE_PER_WORKER,
    SUMMARY_KEYS,
    data_rate,
    fmt,
    job_record,
    max_diff,
    report,
    resume_lines,
    same_world_lines,
    workers_per_rank,
)
from multi_gpu_stage0 import (
    FMNIST_DIR,
    FMNIST_SOURCE,
    NCCL_ENV,
    base_env,
    finish_prepare,
    json_line,
    resolve_data,
    run_probe,
    start_prepare,
)

# the modules' names, re-exported (tests/bench/test_multi_gpu_script.py reads them from this script)
__all__ = ["FMNIST_DIR", "FMNIST_SOURCE", "NCCL_ENV", "PIN_FP8", "RATE_PER_WORKER", "SUMMARY_KEYS", "base_env",
           "data_rate", "finish_prepare", "fmt", "job_record", "json_line", "main", "max_diff", "report",
           "resolve_data", "resume_lines", "run_probe", "same_world_lines", "start_prepare", "workers_per_rank"]

ROOT = Path(__file__).resolve().parents[1]
STAGE_KEYS = ("1", "big", "resume", "2", "cudagraphs")


@dataclass
class Job:
    name: str
    stage: str
    model: str  # B or L
    recipe: str
    nproc: int
    parallel: str  # none, ddp, fsdp
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    after: str = ""  # run only after this job finished (resume)
    dir: str = ""  # run directory under OUT/runs (default: the name)
    # filled in
    gpus: list[int] = field(default_factory=list)
    rc: int | None = None
    seconds: float | None = None
    skipped: str = ""
    summary: dict | None = None
    allgather: str = ""
    replica_note: str = ""  # the trainer's note that it compares the DDP ranks' parameters (CUDA graphs)
    losses: list[float] = field(default_factory=list)
    origin: str = ""  # the --baseline file a row was taken from ("" = this call)


def stage_name(key: str, a: argparse.Namespace) -> str:
    key = key.strip()
    if key in ("big", str(a.gpus)):
        return f"{a.gpus} GPUs"
    names = {"1": "1 GPU", "resume": "resume", "2": "2 GPUs", "cudagraphs": "cudagraphs"}
    if key not in names:
        raise SystemExit(f"multi_gpu.py: unknown stage {key!r} in --only (one of {', '.join(STAGE_KEYS)})")
    return names[key]


def select(jobs: list[Job], only: str, a: argparse.Namespace) -> list[Job]:
    """The jobs of the stages listed in ``only`` (comma-separated keys), stage by stage in that order."""
    order = [stage_name(s, a) for s in only.split(",") if s.strip()]
    return sorted((j for j in jobs if j.stage in order), key=lambda j: order.index(j.stage))


def build_jobs(a: argparse.Namespace) -> list[Job]:
    r8 = a.recipe8
    big = a.gpus  # the "4-GPU" stage uses every GPU (2 processes in the CPU smoke test)
    jobs: list[Job] = []
    for m in ("B", "L"):
        for r in ("bf16", r8):
            jobs.append(Job(f"{m}-{r}-1", "1 GPU", m, r, 1, "none"))
    for r in ("bf16", r8):
        jobs.append(Job(f"L-{r}-ddp{big}", f"{big} GPUs", "L", r, big, "ddp"))
    jobs.append(Job(f"L-bf16-fsdp{big}", f"{big} GPUs", "L", "bf16", big, "fsdp"))
    jobs.append(Job(f"L-{r8}-fsdp{big}-ag8", f"{big} GPUs", "L", r8, big, "fsdp", env=dict(PIN_FP8)))
    jobs.append(Job(f"L-{r8}-fsdp{big}-ag16", f"{big} GPUs", "L", r8, big, "fsdp", ["--no-fsdp-8bit-allgather"],
                    dict(PIN_FP8)))
    for r in ("bf16", r8):
        jobs.append(Job(f"B-{r}-ddp{big}", f"{big} GPUs", "B", r, big, "ddp"))
    if a.dry:  # the CPU smoke test also covers ViT-B's FSDP2 twins
        jobs.append(Job(f"B-{r8}-fsdp{big}-ag8", f"{big} GPUs", "B", r8, big, "fsdp", env=dict(PIN_FP8)))
        jobs.append(Job(f"B-{r8}-fsdp{big}-ag16", f"{big} GPUs", "B", r8, big, "fsdp", ["--no-fsdp-8bit-allgather"],
                        dict(PIN_FP8)))
    rr = a.resume_recipe
    res = ["--steps", "6", "--batch-size", str(a.resume_batch)]
    # order: the reference beside the run stopped at step 3 (GPUs 0,1 and 2,3), then the second reference beside
    # the resume on 1 GPU
    jobs.append(Job("resume-ref-2", "resume", "B", rr, 2, "fsdp", res, dict(PIN_FP8)))
    jobs.append(Job("resume-a-2", "resume", "B", rr, 2, "fsdp", [*res, "--save-every", "0", "--stop-at", "3"],
                    dict(PIN_FP8)))
    jobs.append(Job("resume-ref2-2", "resume", "B", rr, 2, "fsdp", res, dict(PIN_FP8)))
    # resumed in the same run directory (metrics.csv then holds steps 1-6, summary.json the resumed run's)
    jobs.append(Job("resume-b-1", "resume", "B", rr, 1, "none", ["RESUME:resume-a-2", "--save-every", "-1"],
                    dict(PIN_FP8), after="resume-a-2", dir="resume-a-2"))
    # the same stop resumed on 2 GPUs (no world-size change: must be bit-identical to the references), and an
    # uninterrupted 1-GPU run at the same global batch (how far 1 and 2 processes differ from identical weights)
    jobs.append(Job("resume-c-2", "resume", "B", rr, 2, "fsdp", [*res, "--save-every", "0", "--stop-at", "3"],
                    dict(PIN_FP8)))
    jobs.append(Job("resume-ref-1", "resume", "B", rr, 1, "none",
                    ["--steps", "6", "--batch-size", str(2 * a.resume_batch)], dict(PIN_FP8)))
    jobs.append(Job("resume-d-2", "resume", "B", rr, 2, "fsdp", ["RESUME:resume-c-2", "--save-every", "-1"],
                    dict(PIN_FP8), after="resume-c-2", dir="resume-c-2"))
    if big != 2:
        for m in ("B", "L"):
            for r in ("bf16", r8):
                jobs.append(Job(f"{m}-{r}-ddp2", "2 GPUs", m, r, 2, "ddp"))
        jobs.append(Job(f"L-{r8}-fsdp2-ag8", "2 GPUs", "L", r8, 2, "fsdp", env=dict(PIN_FP8)))
        jobs.append(Job(f"L-{r8}-fsdp2-ag16", "2 GPUs", "L", r8, 2, "fsdp", ["--no-fsdp-8bit-allgather"],
                        dict(PIN_FP8)))
    cg = ["--steps", "14", "--batch-size", str(a.resume_batch)]
    jobs.append(Job("cg-ddp2-eager", "cudagraphs", "B", "bf16", 2, "ddp", [*cg, "--no-compile"]))
    jobs.append(Job("cg-ddp2-graphs", "cudagraphs", "B", "bf16", 2, "ddp",
                    [*cg, "--compile", "--compile-mode", "reduce-overhead"]))
    if a.dry:
        for j in jobs:
            if j.stage == "cudagraphs":
                j.skipped = "needs CUDA (CUDA graphs)"
    return jobs


def of_models(jobs: list[Job], models: str) -> list[Job]:
    """The jobs of the models listed in ``models`` (comma-separated: ``B`` ViT-B/32, ``L`` ViT-L/14)."""
    keep = {m.strip().upper() for m in models.split(",") if m.strip()}
    if not keep or keep - {"B", "L"}:
        raise ValueError(f"--models {models}: expected B, L or B,L")
    return [j for j in jobs if j.model in keep]


def command(j: Job, a: argparse.Namespace, out: Path) -> list[str]:
    py = [sys.executable]
    launcher = [*py, "-m", "lowbit"] if j.nproc == 1 else [
        *py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(j.nproc), "-m", "lowbit"]
    run_dir = out / "runs" / (j.dir or j.name)
    if j.args and j.args[0].startswith("RESUME:"):
        src = out / "runs" / j.args[0].split(":", 1)[1]
        return [*launcher, "train", "--resume", str(src), "--no-progress",
                *(["--device", "cpu", "--threads", "1"] if a.dry else []), *j.args[1:]]
    if a.dry:
        layers = "1" if j.model == "B" else "2"
        model = ["--preset", "tiny", "--set", f"model.vision.layers={layers}", "--set", f"model.text.layers={layers}",
                 "--device", "cpu", "--threads", "1", "--batch-size", "8"]
    else:
        preset, batch = ("vit-b-32", a.batch_b) if j.model == "B" else ("vit-l-14", a.batch_l)
        model = ["--preset", preset, "--batch-size", str(batch)]
    steps = ["--steps", str(a.steps)]
    if j.stage != "cudagraphs":  # eager unless --compile (lowbit train's default, compile auto, compiles on 1 GPU)
        steps.append("--compile" if a.compile else "--no-compile")
    return [*launcher, "train", *model, *steps, "--recipe", j.recipe, "--optimizer", "stableadamw", "--warmup", "5",
            "--data", a.data_spec, "--zeroshot", "none", "--no-progress", "--log-every", "1", "--save-every", "-1",
            "--workers", str(workers_per_rank(a)), *(["--parallel", j.parallel] if j.parallel != "none" else []),
            "--out", str(run_dir), *j.args]


def run_batch(batch: list[Job], a: argparse.Namespace, out: Path, t0: float, by_name: dict[str, Job]) -> None:
    """Start every job of ``batch`` on its GPUs, wait for all."""
    procs = []
    for j in batch:
        left = a.budget - (time.time() - t0)
        if left < 20:
            j.skipped = f"budget ({a.budget:.0f} s) spent"
            continue
        if j.after and (by_name[j.after].rc != 0):
            j.skipped = f"{j.after} did not finish"
            continue
        # TRITON_CACHE_AUTOTUNING: the matmul's autotuning results go to the disk cache, so only the first run
        # of a shape benchmarks the candidates (and the 8-bit/16-bit all-gather twins use the same kernel config)
        env = {**base_env(a), "TRITON_CACHE_AUTOTUNING": os.environ.get("TRITON_CACHE_AUTOTUNING", "1"), **j.env,
               "PYTHONUNBUFFERED": "1"}
        if not a.dry:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, j.gpus))
        cmd = command(j, a, out)
        log = (out / "runs" / f"{j.name}.log").open("w")
        log.write(" ".join([*(f"{k}={v}" for k, v in j.env.items()), *cmd]) + "\n\n")
        log.flush()
        limit = min(a.limit * (3 if j.stage == "cudagraphs" else 2 if a.compile else 1), left)
        procs.append((j, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT), log,
                      time.time(), limit))
    for j, p, log, start, limit in procs:
        try:
            j.rc = p.wait(timeout=max(1.0, start + limit - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            j.rc = p.wait()
            j.skipped = f"killed after {limit:.0f} s"
        j.seconds = time.time() - start
        log.close()
        collect(j, out)
        print(f"{time.time() - t0:6.0f} s  {j.name:28s} rc {j.rc}  {j.seconds:.0f} s  "
              f"{fmt((j.summary or {}).get('samples_per_s_steady'))} img/s {j.skipped}", flush=True)


def collect(j: Job, out: Path) -> None:
    d = out / "runs" / (j.dir or j.name)
    s = d / "summary.json"
    if s.is_file():
        j.summary = json.loads(s.read_text())
    m = d / "metrics.csv"
    if m.is_file():
        import csv

        with m.open() as f:
            j.losses = [float(r["loss"]) for r in csv.DictReader(f)]
    log = out / "runs" / f"{j.name}.log"
    if log.is_file():
        text = log.read_text(errors="replace")
        hit = re.search(r"8-bit all-gather: .*|fsdp all-gather in 16 bits: .*", text)
        j.allgather = hit.group(0).strip() if hit else ""
        hit = re.search(r"DDP with CUDA graphs: .*", text)
        j.replica_note = hit.group(0).strip() if hit else ""


def schedule(jobs: list[Job], a: argparse.Namespace, out: Path, t0: float) -> None:
    """Stage by stage (in the jobs' order); within a stage, jobs are packed onto free GPUs and run side by side
    (not with --serial). ``t0``: the call's start, which ``--budget`` counts from."""
    by_name = {j.name: j for j in jobs}
    stages: list[str] = []
    for j in jobs:
        if j.stage not in stages:
            stages.append(j.stage)
    for stage in stages:
        todo = [j for j in jobs if j.stage == stage and not j.skipped]
        while todo:
            batch, free = [], list(range(a.gpus))
            for j in list(todo):
                if j.after and j.after not in {x.name for x in jobs if x.rc is not None or x.skipped}:
                    continue  # its predecessor has not run yet
                if j.nproc <= len(free) and (not batch or not (a.serial or a.dry)):
                    j.gpus, free = free[: j.nproc], free[j.nproc :]
                    batch.append(j)
                    todo.remove(j)
            if not batch:  # only dependants left whose predecessor was skipped
                for j in todo:
                    j.skipped = j.skipped or f"{j.after} did not run"
                break
            run_batch(batch, a, out, t0, by_name)


def pack_runs(out: Path) -> None:
    """``OUT/runs`` → ``OUT/runs.tar.gz`` without TensorBoard files (few files come back from the device)."""
    import tarfile

    runs = out / "runs"
    with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
        for f in sorted(runs.rglob("*")):
            if f.is_file() and "tensorboard" not in f.parts:
                tar.add(f, arcname=str(f.relative_to(out)))
    import shutil

    shutil.rmtree(runs, ignore_errors=True)


# --- baseline -----------------------------------------------------------------------------------------------------


def load_baseline(path: Path, have: set[str]) -> tuple[list[Job], dict]:
    """The jobs of an earlier call's ``multi_gpu.json`` whose stages this call does not run (tagged with their
    origin), and that call's ``args`` / ``probe``."""
    d = json.loads(path.read_text())
    names = {f.name for f in dataclasses.fields(Job)}
    jobs = []
    for r in d.get("jobs", []):
        if r.get("stage") in have:
            continue
        j = Job(**{k: v for k, v in r.items() if k in names})
        j.origin = j.origin or path.name
        jobs.append(j)
    return jobs, {"args": d.get("args", {}), "probe": d.get("probe") or {}, "path": str(path)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/multi_gpu"))
    p.add_argument("--dry", action="store_true", help="CPU smoke test: tiny model, gloo, at most 2 processes")
    p.add_argument("--gpus", type=int, default=0, help="GPUs to use (default: all; 2 with --dry)")
    p.add_argument("--recipe8", default="switchback", help="the 8-bit recipe (tensor-wise W for the 8-bit gather)")
    p.add_argument("--resume-recipe", default="bf16", help="recipe of the resume check's runs")
    p.add_argument("--steps", type=int, default=0, help="steps per run (default 14; 6 with --dry)")
    p.add_argument("--batch-b", type=int, default=256, help="ViT-B/32 batch per GPU")
    p.add_argument("--batch-l", type=int, default=128, help="ViT-L/14 batch per GPU")
    p.add_argument("--resume-batch", type=int, default=64, help="ViT-B/32 batch per GPU of the resume / graphs checks")
    p.add_argument("--data", default="auto", help="fmnist (prepared Fashion-MNIST shards), synthetic, auto (fmnist "
                   "where its files are present, not with --dry) or any lowbit train --data spec")
    p.add_argument("--fmnist-source", default="", help=f"IDX files for --data fmnist (default {FMNIST_SOURCE})")
    p.add_argument("--fmnist-dir", default="", help=f"prepared Fashion-MNIST folder (default {FMNIST_DIR}; prepared "
                   "there unless its manifest.json exists)")
    p.add_argument("--max-workers", type=int, default=14, help="DataLoader workers per rank, at most")
    p.add_argument("--budget", type=float, default=500, help="seconds from the start; later runs are skipped")
    p.add_argument("--limit", type=float, default=100, help="seconds per run (x3 for the compiled one)")
    p.add_argument("--serial", action="store_true", help="one run at a time (no runs side by side)")
    p.add_argument("--compile", action="store_true", help="torch.compile every run (default mode; compile time is "
                   "excluded from images/s but counts against the budget)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep the resume check's checkpoint under OUT")
    p.add_argument("--probe", choices=("all", "data", "none"), default=None,
                   help="stage 0: all (topology, NCCL, data; the default), data (the DataLoader rate only), none "
                   "(the default with --dry)")
    p.add_argument("--no-probe", action="store_true", help="same as --probe none")
    p.add_argument("--only", default="", help="comma-separated stages to run, in that order: " + ",".join(STAGE_KEYS))
    p.add_argument("--models", default="B,L", help="comma-separated models to run: B (ViT-B/32), L (ViT-L/14); the "
                   "resume and CUDA-graphs checks are ViT-B/32")
    p.add_argument("--baseline", default="", help="an earlier call's multi_gpu.json: the stages this call does not "
                   "run are taken from it (1-GPU rows for the scaling efficiency, its stage-0 data rate)")
    a = p.parse_args()
    t0 = time.time()
    if a.baseline and not Path(a.baseline).is_file():
        p.error(f"--baseline {a.baseline}: no such file (an earlier call's multi_gpu.json)")
    if a.dry:
        a.gpus = a.gpus or 2
        a.steps = a.steps or 6
        a.resume_batch = 8
    else:
        import torch

        a.gpus = a.gpus or torch.cuda.device_count()
        a.steps = a.steps or 14
        if a.gpus < 2:
            print("multi_gpu.py: needs at least 2 GPUs (or --dry on the CPU)", file=sys.stderr)
            return 2
    a.probe = "none" if a.no_probe else (a.probe or ("none" if a.dry else "all"))
    if a.dry and a.probe == "all":
        a.probe = "data"  # no NCCL on the CPU
    a.prepared = ""
    resolve_data(a)
    out = Path(a.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    try:
        jobs = of_models(build_jobs(a), a.models)
    except ValueError as e:
        p.error(str(e))
    if a.only:
        jobs = select(jobs, a.only, a)
    baseline = None
    if a.baseline:
        extra, baseline = load_baseline(Path(a.baseline), {j.stage for j in jobs})
        jobs = extra + jobs  # the report lists the baseline's rows first (its 1-GPU and 4-GPU stages)
    prep = start_prepare(a, out)
    md_probe, probe = "", {}
    try:
        if a.probe != "none":
            md_probe, probe = run_probe(a, out, prep)
        else:
            finish_prepare(prep, a, out)
    except RuntimeError as e:  # the data preparation failed: nothing can run
        print(e, file=sys.stderr)
        a.prepared = f"**failed**: {e}"
        for j in jobs:
            j.skipped = j.skipped or "no data"
    schedule([j for j in jobs if not j.origin], a, out, t0)
    total = time.time() - t0
    if not a.keep_checkpoints:  # the resume check's DCP checkpoint (GBs for ViT-B): not worth copying back
        import shutil

        for ck in [*(out / "runs").glob("*/checkpoint.dcp"), *(out / "runs").glob("*/.checkpoint.dcp.*")]:
            shutil.rmtree(ck, ignore_errors=True)
        for ck in (out / "runs").glob("*/checkpoint.pt"):
            ck.unlink()
    md = report(jobs, a, total, probe, baseline) + md_probe
    pack_runs(out)
    (out / "multi_gpu.md").write_text(md)
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    (out / "multi_gpu.json").write_text(json.dumps(
        {"args": args, "total_s": total, "env": {k: os.environ.get(k, v) for k, v in NCCL_ENV.items()},
         "probe": probe or (baseline or {}).get("probe") or {}, "probe_origin": "" if probe else (baseline or {}).get("path", ""),
         "jobs": [job_record(j) for j in jobs]}, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
