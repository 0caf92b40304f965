#!/usr/bin/env python3
"""Multi-GPU measurement of ``lowbit train`` (issue 19), one device call of at most ~9 minutes on 4 H100s.

What it runs (synthetic data rendered by DataLoader workers, eager unless ``--compile``, no checkpoints except the
resume check):

0. what bounds the runs before the model does: ``nvidia-smi topo -m``, NCCL bus bandwidth on all and on 2 GPUs,
   and the DataLoader's images/s with one rank's workers (``bench/probes/multi_gpu_probe.py``);
1. one GPU: ViT-B/32 (256 per GPU) and ViT-L/14 (128 per GPU), bf16 and the 8-bit recipe (``--recipe8``,
   default switchback) — four single-GPU runs side by side, one per GPU (``--serial``: one at a time);
2. four GPUs: DDP for both models and both recipes; FSDP2 for ViT-L/14 (bf16, 8-bit recipe with and without the
   8-bit weight all-gather);
3. the cross-world-size resume (NCCL): ViT-B/32 on 2 GPUs to step 6 uninterrupted, beside the same run stopped at
   step 3 and resumed on 1 GPU (``--resume``: the global batch is kept): losses of steps 4-6 compared;
4. two GPUs: DDP for both models and recipes, FSDP2 ViT-L/14 8-bit with and without the 8-bit all-gather (two
   2-GPU runs side by side on GPUs 0,1 and 2,3);
5. CUDA graphs with DDP (2 GPUs, ViT-B/32 bf16, ``--compile --compile-mode reduce-overhead`` with
   ``LOWBIT_DDP_CUDAGRAPHS=1``, which lifts the trainer's refusal) beside the same run eager: does it run, do the
   losses agree (bf16 level), how fast.

Steady-state images/s come from each run's ``summary.json`` (``samples_per_s_steady``: steps after the first 5);
peak memory is rank 0's. Runs are skipped once ``--budget`` seconds have passed (stages in the order above), so
the table always comes out. Writes ``OUT/multi_gpu.md``, ``OUT/multi_gpu.json`` and ``OUT/runs.tar.gz`` (each run's
log, ``metrics.csv``, ``summary.json`` and ``config.yaml``).

    python3 bench/multi_gpu.py --out "$OUT"                 # the 4-GPU machine, repo root as cwd
    python3 bench/multi_gpu.py --out /tmp/mg --dry          # CPU smoke test: tiny model, gloo, <= 2 procs

NVLink multicast stays off (KINDS.md): NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
are set for every run unless already set.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RENDER_PER_WORKER = 430  # synthetic 224-px images per second per DataLoader worker (measured, bench/scripts/gpu_multi.sh)
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


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
    losses: list[float] = field(default_factory=list)


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
    jobs.append(Job(f"L-{r8}-fsdp{big}-ag8", f"{big} GPUs", "L", r8, big, "fsdp"))
    jobs.append(Job(f"L-{r8}-fsdp{big}-ag16", f"{big} GPUs", "L", r8, big, "fsdp", ["--no-fsdp-8bit-allgather"]))
    for r in ("bf16", r8):
        jobs.append(Job(f"B-{r}-ddp{big}", f"{big} GPUs", "B", r, big, "ddp"))
    if a.dry:  # the CPU smoke test also covers ViT-B's FSDP2 twins
        jobs.append(Job(f"B-{r8}-fsdp{big}-ag8", f"{big} GPUs", "B", r8, big, "fsdp"))
        jobs.append(Job(f"B-{r8}-fsdp{big}-ag16", f"{big} GPUs", "B", r8, big, "fsdp", ["--no-fsdp-8bit-allgather"]))
    res = ["--steps", "6", "--batch-size", str(a.resume_batch)]
    jobs.append(Job("resume-ref-2", "resume", "B", "bf16", 2, "fsdp", res))
    jobs.append(Job("resume-a-2", "resume", "B", "bf16", 2, "fsdp", [*res, "--save-every", "0", "--stop-at", "3"]))
    # resumed in the same run directory (metrics.csv then holds steps 1-6, summary.json the resumed run's)
    jobs.append(Job("resume-b-1", "resume", "B", "bf16", 1, "none", ["RESUME:resume-a-2", "--save-every", "-1"], after="resume-a-2",
                    dir="resume-a-2"))
    if big != 2:
        for m in ("B", "L"):
            for r in ("bf16", r8):
                jobs.append(Job(f"{m}-{r}-ddp2", "2 GPUs", m, r, 2, "ddp"))
        jobs.append(Job(f"L-{r8}-fsdp2-ag8", "2 GPUs", "L", r8, 2, "fsdp"))
        jobs.append(Job(f"L-{r8}-fsdp2-ag16", "2 GPUs", "L", r8, 2, "fsdp", ["--no-fsdp-8bit-allgather"]))
    cg = ["--steps", "14", "--batch-size", str(a.resume_batch)]
    jobs.append(Job("cg-ddp2-eager", "cudagraphs", "B", "bf16", 2, "ddp", cg))
    jobs.append(Job("cg-ddp2-graphs", "cudagraphs", "B", "bf16", 2, "ddp",
                    [*cg, "--compile", "--compile-mode", "reduce-overhead"], {"LOWBIT_DDP_CUDAGRAPHS": "1"}))
    if a.dry:
        for j in jobs:
            if j.stage == "cudagraphs":
                j.skipped = "needs CUDA (CUDA graphs)"
    return jobs


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
        steps = ["--steps", str(a.steps)]
    else:
        preset, batch = ("vit-b-32", a.batch_b) if j.model == "B" else ("vit-l-14", a.batch_l)
        model = ["--preset", preset, "--batch-size", str(batch)]
        steps = ["--steps", str(a.steps)]
    workers = workers_per_rank(j, a)
    if a.compile and j.stage != "cudagraphs":
        steps.append("--compile")
    return [*launcher, "train", *model, *steps, "--recipe", j.recipe, "--optimizer", "stableadamw", "--warmup", "5",
            "--data", a.data, "--zeroshot", "none", "--no-progress", "--log-every", "1", "--save-every", "-1", "--workers", str(workers),
            *(["--parallel", j.parallel] if j.parallel != "none" else []), "--out", str(run_dir), *j.args]


def workers_per_rank(j: Job | None, a: argparse.Namespace) -> int:
    if a.dry:
        return 0
    cores = os.cpu_count() or 16
    return max(2, min(a.max_workers, cores // a.gpus - 2))


def run_batch(batch: list[Job], a: argparse.Namespace, out: Path, t0: float, by_name: dict[str, Job]) -> None:
    """Start every job of ``batch`` on its GPUs, wait for all."""
    procs = []
    for j in batch:
        left = a.budget - (time.time() - t0)
        if left < 20:
            j.skipped = f"budget ({a.budget} s) spent"
            continue
        if j.after and (by_name[j.after].rc != 0):
            j.skipped = f"{j.after} did not finish"
            continue
        # TRITON_CACHE_AUTOTUNING: the matmul's autotuning results go to the disk cache, so only the first run
        # of a shape benchmarks the candidates (and the 8-bit/16-bit all-gather twins use the same kernel config)
        env = {**os.environ, **{k: os.environ.get(k, v) for k, v in NCCL_ENV.items()},
               "TRITON_CACHE_AUTOTUNING": os.environ.get("TRITON_CACHE_AUTOTUNING", "1"), **j.env,
               "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        if not a.dry:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, j.gpus))
        cmd = command(j, a, out)
        log = (out / "runs" / f"{j.name}.log").open("w")
        log.write(" ".join(cmd) + "\n\n")
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
        hit = re.search(r"8-bit all-gather: .*|fsdp all-gather in 16 bits: .*", log.read_text(errors="replace"))
        j.allgather = hit.group(0).strip() if hit else ""


def schedule(jobs: list[Job], a: argparse.Namespace, out: Path) -> None:
    """Stage by stage; within a stage, jobs are packed onto free GPUs and run side by side (not with --serial)."""
    t0 = time.time()
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


def run_probe(a: argparse.Namespace, out: Path) -> str:
    """Stage 0: the GPUs' link (topology, NCCL bus bandwidth) and the data pipeline's rate, as a markdown section."""
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in NCCL_ENV.items()},
           "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    probe = str(ROOT / "bench" / "probes" / "multi_gpu_probe.py")
    dist = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmds = [["nvidia-smi", "topo", "-m"],
            [*dist, "--nproc_per_node", str(a.gpus), probe, "--nccl"],
            [*dist, "--nproc_per_node", "2", probe, "--nccl"],
            [sys.executable, probe, "--data", a.data, "--workers", str(workers_per_rank(None, a)), "--batch-size",
             str(a.batch_b), "--seconds", "8"]]
    lines = ["", "## Stage 0: link and data", ""]
    for cmd in cmds:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
            text = r.stdout.strip() or r.stderr.strip()[-2000:]
        except (OSError, subprocess.TimeoutExpired) as e:
            text = f"failed: {e}"
        lines += [f"`{' '.join(Path(c).name if c.startswith('/') else c for c in cmd)}`", "", "```", text, "```", ""]
        print(text, flush=True)
    return "\n".join(lines) + "\n"


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


def fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def report(jobs: list[Job], a: argparse.Namespace, out: Path, total: float) -> str:
    by = {j.name: j for j in jobs}
    one = {(j.model, j.recipe): j for j in jobs if j.stage == "1 GPU"}
    meta = next((j.summary for j in jobs if j.summary), None)
    lines = ["# Multi-GPU `lowbit train` (`bench/multi_gpu.py`)", ""]
    if meta:
        v = meta["versions"]
        lines += [f"{meta['device']} | torch {v['torch']} | triton {v.get('triton')} | {meta['precision']} | "
                  f"{a.steps} steps, images/s after the first 5 | data {meta['config']['data']}, "
                  f"{meta['config']['workers']} workers per rank | {'compiled' if a.compile else 'eager'} | "
                  + ("runs one at a time | " if a.serial or a.dry else "1-GPU runs side by side (one per GPU), "
                     "2-GPU runs in pairs (GPUs 0,1 and 2,3) | ")
                  + ("CPU smoke test (tiny model, gloo)" if a.dry else f"ViT-B/32 {a.batch_b}, ViT-L/14 {a.batch_l} per GPU"),
                  ""]
    lines += ["Scaling efficiency: images/s per GPU over the 1-GPU run's (same model and recipe). Speed-up: the 8-bit "
              "recipe's images/s over bf16's (same model, GPUs and mode). Peak memory: rank 0. 'data?': images/s "
              f"per GPU above 80% of the workers' render rate (~{RENDER_PER_WORKER} img/s each): the data may bound it.",
              "", "| model | recipe | GPUs | mode | global batch | images/s | per GPU | scaling | speed-up | peak GiB | "
              "weight all-gather | run s | note |", "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    rows = []
    for j in jobs:
        if j.stage in ("resume", "cudagraphs"):
            continue
        s = j.summary or {}
        ips = s.get("samples_per_s_steady")
        per = ips / j.nproc if ips else None
        base = one.get((j.model, j.recipe))
        b_ips = (base.summary or {}).get("samples_per_s_steady") if base else None
        eff = f"{100 * per / b_ips:.1f}%" if per and b_ips and j.nproc > 1 else ""
        twin = next((x for x in jobs if x.model == j.model and x.recipe == "bf16" and x.nproc == j.nproc
                     and x.parallel == j.parallel and x.stage == j.stage), None)
        t_ips = (twin.summary or {}).get("samples_per_s_steady") if twin and twin is not j else None
        spd = f"{ips / t_ips:.2f}x" if ips and t_ips and j.recipe != "bf16" else ""
        mode = {"none": "-", "ddp": "DDP", "fsdp": "FSDP2"}[j.parallel]
        if j.parallel == "fsdp" and j.recipe != "bf16":
            mode += " 16-bit gather" if "--no-fsdp-8bit-allgather" in j.args else " 8-bit gather"
        ag = ""
        if j.allgather.startswith("8-bit"):
            m = re.search(r"([\d.]+) MiB per full gather instead of ([\d.]+) MiB", j.allgather)
            ag = f"{m.group(1)} MiB (16-bit: {m.group(2)})" if m else j.allgather
        workers = (s.get("config") or {}).get("workers", 0)
        note = j.skipped or ("" if j.rc == 0 else f"rc {j.rc}")
        if per and workers and per > 0.8 * workers * RENDER_PER_WORKER:
            note = (note + " data?").strip()
        rows.append(f"| {j.model} | {j.recipe} | {j.nproc} | {mode} | {s.get('global_batch', '-')} | {fmt(ips)} | "
                    f"{fmt(per)} | {eff} | {spd} | {fmt(s.get('peak_memory_gb'), '.1f')} | {ag} | "
                    f"{fmt(j.seconds)} | {note} |")
    lines += rows
    # 8-bit all-gather: identical losses?
    lines += ["", "8-bit weight all-gather vs 16-bit (same runs; the numerics must be identical):", ""]
    for j in jobs:
        if j.name.endswith("-ag8"):
            k = by.get(j.name[:-1] + "16")
            if k and j.losses and k.losses:
                same = j.losses == k.losses
                d = max(abs(x - y) for x, y in zip(j.losses, k.losses))
                a8, a16 = (j.summary or {}).get("samples_per_s_steady"), (k.summary or {}).get("samples_per_s_steady")
                # step 1's loss is the forward of the same weights: equal iff the 8-bit gather's codes are the 16-bit
                # path's; later steps also carry the backward's run-to-run noise on a GPU (atomics)
                first = "step-1 loss identical" if j.losses[0] == k.losses[0] else \
                    f"step-1 loss differs ({j.losses[0]!r} vs {k.losses[0]!r})"
                lines.append(f"- {j.name[:-4]}: {first}; all {len(j.losses)} steps "
                             f"{'bit-identical' if same else f'max |dloss| {d:.3g}'}; images/s 8-bit {fmt(a8)} vs "
                             f"16-bit {fmt(a16)}" + (f" ({a8 / a16:.3f}x)" if a8 and a16 else ""))
    ref, b = by.get("resume-ref-2"), by.get("resume-b-1")
    lines += ["", "Resume across world sizes (2 GPUs to step 3, then 1 GPU to 6, vs 2 GPUs to 6):", ""]
    if ref and b and ref.losses and b.losses and len(b.losses) >= 6 and len(ref.losses) >= 6:
        d = max(abs(x - y) for x, y in zip(ref.losses[3:6], b.losses[3:6]))
        same3 = ref.losses[:3] == b.losses[:3]
        lines.append(f"- steps 1-3 {'identical' if same3 else 'differ'}; steps 4-6 max |dloss| {d:.3g} "
                     f"(reference {', '.join(f'{x:.5f}' for x in ref.losses[3:6])}; resumed "
                     f"{', '.join(f'{x:.5f}' for x in b.losses[3:6])}); resumed summary step "
                     f"{(b.summary or {}).get('step')}, samples seen {(b.summary or {}).get('samples_seen')} "
                     f"(reference {(ref.summary or {}).get('samples_seen')})")
    else:
        lines.append(f"- not complete: {[(x.name, x.rc, x.skipped) for x in (ref, b) if x]}")
    e, g = by.get("cg-ddp2-eager"), by.get("cg-ddp2-graphs")
    lines += ["", "CUDA graphs with DDP (2 GPUs, ViT-B/32 bf16, LOWBIT_DDP_CUDAGRAPHS=1):", ""]
    if e and g and e.losses and g.losses:
        rel = max(abs(x - y) / abs(y) for x, y in zip(g.losses, e.losses))
        lines.append(f"- reduce-overhead: rc {g.rc}, {len(g.losses)} steps, max relative |dloss| vs eager {rel:.3g}; "
                     f"images/s {fmt((g.summary or {}).get('samples_per_s_steady'))} vs eager "
                     f"{fmt((e.summary or {}).get('samples_per_s_steady'))} (steady = steps 6+, compile included "
                     "in neither)")
    else:
        lines.append(f"- not measured: {[(x.name, x.rc, x.skipped) for x in (e, g) if x]} (see runs/*.log)")
    lines += ["", f"Total {total:.0f} s."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/multi_gpu"))
    p.add_argument("--dry", action="store_true", help="CPU smoke test: tiny model, gloo, at most 2 processes")
    p.add_argument("--gpus", type=int, default=0, help="GPUs to use (default: all; 2 with --dry)")
    p.add_argument("--recipe8", default="switchback", help="the 8-bit recipe (tensor-wise W for the 8-bit gather)")
    p.add_argument("--steps", type=int, default=0, help="steps per run (default 16; 6 with --dry)")
    p.add_argument("--batch-b", type=int, default=256, help="ViT-B/32 batch per GPU")
    p.add_argument("--batch-l", type=int, default=128, help="ViT-L/14 batch per GPU")
    p.add_argument("--resume-batch", type=int, default=64, help="ViT-B/32 batch per GPU of the resume / graphs checks")
    p.add_argument("--data", default="synthetic", help="training data spec of every run")
    p.add_argument("--max-workers", type=int, default=14, help="DataLoader workers per rank, at most")
    p.add_argument("--budget", type=float, default=500, help="seconds; later runs are skipped")
    p.add_argument("--limit", type=float, default=100, help="seconds per run (x3 for the compiled one)")
    p.add_argument("--serial", action="store_true", help="one run at a time (no runs side by side)")
    p.add_argument("--compile", action="store_true", help="torch.compile every run (default mode; compile time is "
                   "excluded from images/s but counts against the budget)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep the resume check's checkpoint under OUT")
    p.add_argument("--no-probe", action="store_true", help="skip stage 0 (link and data probes)")
    p.add_argument("--only", default="", help="comma-separated stages to run: 1,big,resume,2,cudagraphs")
    a = p.parse_args()
    if a.dry:
        a.gpus = a.gpus or 2
        a.steps = a.steps or 6
        a.resume_batch = 8
    else:
        import torch

        a.gpus = a.gpus or torch.cuda.device_count()
        a.steps = a.steps or 16
        if a.gpus < 2:
            print("multi_gpu.py: needs at least 2 GPUs (or --dry on the CPU)", file=sys.stderr)
            return 2
    out = Path(a.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    jobs = build_jobs(a)
    if a.only:
        keep = {"1": "1 GPU", "big": f"{a.gpus} GPUs", "resume": "resume", "2": "2 GPUs", "cudagraphs": "cudagraphs"}
        stages = {keep[s.strip()] for s in a.only.split(",")}
        jobs = [j for j in jobs if j.stage in stages]
    t0 = time.time()
    probe = "" if a.dry or a.no_probe else run_probe(a, out)
    schedule(jobs, a, out)
    total = time.time() - t0
    if not a.keep_checkpoints:  # the resume check's DCP checkpoint (GBs for ViT-B): not worth copying back
        import shutil

        for ck in [*(out / "runs").glob("*/checkpoint.dcp"), *(out / "runs").glob("*/.checkpoint.dcp.*")]:
            shutil.rmtree(ck, ignore_errors=True)
        for ck in (out / "runs").glob("*/checkpoint.pt"):
            ck.unlink()
    md = report(jobs, a, out, total) + probe
    pack_runs(out)
    (out / "multi_gpu.md").write_text(md)
    (out / "multi_gpu.json").write_text(json.dumps(
        {"args": vars(a), "total_s": total, "env": {k: os.environ.get(k, v) for k, v in NCCL_ENV.items()},
         "jobs": [{k: v for k, v in asdict(j).items() if k != "summary"}
                  | {"summary": {k: (j.summary or {}).get(k) for k in (
                      "samples_per_s_steady", "samples_per_s", "peak_memory_gb", "global_batch", "world_size",
                      "parallel", "recipe", "device", "precision", "step", "samples_seen", "final_loss", "versions")}}
                  for j in jobs]}, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
