"""The report of ``bench/multi_gpu.py``: its table and checks from the runs' ``summary.json`` and logs.

Images/s are the trainer's steady rate (``samples_per_s_steady``). A summary written before the trainer's clock was
fixed (issue 27: the step's interval ended at the forward's ``loss.item()``, leaving most of the backward and the
optimizer outside it, by different amounts per configuration) has no ``data_wait_frac`` field: its rows say
"stale clock" and take no part in a scaling efficiency or speed-up. Where the trainer reports how long the steps
waited for data (``data_wait_frac``), the 'data?' flag uses it; otherwise the data probe's rate.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import asdict
from typing import Any

# fallback when no data probe ran, images/s per DataLoader worker at 224 px: synthetic as stage 0 measured it on the
# 4xH100 host (1983 img/s with 14 workers at batch 256); Fashion-MNIST shards as stage 0 measured them on the 2xH100
# host with the trainer's uint8 transport (15402 img/s with 14 workers, multi-gpu-2-vit-b.md; 294 per worker with
# float32 transport before)
RATE_PER_WORKER = {"synthetic": 141.0, "fmnist": 1100.0}
# the fp8 matmul's per-process cuBLAS/Triton timing choice made two otherwise identical runs differ at step 1; pinned
# for the runs whose losses are compared (no effect on int8/bf16 matmuls: int8 always runs Triton)
PIN_FP8 = {"LOWBIT_FP8_MATMUL": "triton"}
SUMMARY_KEYS = ("samples_per_s_steady", "samples_per_s", "mfu_steady", "data_wait_frac", "flops_per_sample",
                "peak_memory_gb", "global_batch", "world_size", "parallel", "recipe", "device", "precision", "step",
                "samples_seen", "final_loss", "versions")
DATA_WAIT_FLAG = 0.1  # a run whose steps waited for data this share of the time is flagged 'data?'

Job = Any  # multi_gpu.Job (a dataclass): the report reads its fields


def workers_per_rank(a: argparse.Namespace) -> int:
    if a.dry:
        return 0
    cores = os.cpu_count() or 16
    return max(2, min(a.max_workers, cores // a.gpus - 2))


def honest(summary: dict | None) -> bool:
    """Whether a run's images/s come from the fixed clock (each step timed to the end of its device work): the
    fixed trainer writes ``data_wait_frac`` beside them, the old one did not."""
    return bool(summary) and "data_wait_frac" in summary  # type: ignore[operator]


def steady(j: Job) -> float | None:
    """A run's steady images/s where its clock is honest, else None (a stale figure is no basis for a ratio)."""
    s = j.summary or {}
    return s.get("samples_per_s_steady") if honest(s) else None


def fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def data_rate(probe: dict | None, kind: str, workers: int) -> float | None:
    """Images/s one rank's DataLoader delivers with ``workers`` processes: the data probe's measurement (scaled per
    worker if it ran with another count), else the assumed per-worker rate of the data kind."""
    p = (probe or {}).get("data") or {}
    if p.get("images_per_s"):
        if p.get("workers") == workers:
            return float(p["images_per_s"])
        return float(p["per_worker"]) * max(1, workers)
    per = RATE_PER_WORKER.get(kind)
    return per * workers if per and workers else None


def max_diff(x: list[float], y: list[float], lo: int, hi: int) -> float | None:
    if len(x) < hi or len(y) < hi:
        return None
    return max(abs(p - q) for p, q in zip(x[lo:hi], y[lo:hi]))


def resume_lines(by: dict[str, Job]) -> list[str]:
    ref, ref2, stop, b = (by.get(n) for n in ("resume-ref-2", "resume-ref2-2", "resume-a-2", "resume-b-1"))
    pin = ", ".join(f"{k}={v}" for k, v in (ref.env if ref else {}).items())
    lines = ["", f"Resume across world sizes (2 GPUs to step 3, then 1 GPU to 6, vs 2 GPUs to 6; recipe "
             f"{ref.recipe if ref else '-'}{', ' + pin if pin else ''}):", ""]
    if not (ref or stop or b or ref2):
        return [*lines, "- not in this call"]
    if not (ref and b and len(ref.losses) >= 6 and len(b.losses) >= 6):
        lines.append(f"- not complete: {[(x.name, x.rc, x.skipped) for x in (ref, stop, b, ref2) if x]}")
        return lines
    d = max_diff(ref.losses, b.losses, 3, 6)
    same3 = ref.losses[:3] == b.losses[:3]
    d3 = max_diff(ref.losses, b.losses, 0, 3)
    lines.append(f"- steps 1-3 {'identical' if same3 else f'differ (max |dloss| {d3:.3g})'}; steps 4-6 max |dloss| "
                 f"{d:.3g} (reference {', '.join(f'{x:.5f}' for x in ref.losses[3:6])}; resumed "
                 f"{', '.join(f'{x:.5f}' for x in b.losses[3:6])}); resumed summary step "
                 f"{(b.summary or {}).get('step')}, samples seen {(b.summary or {}).get('samples_seen')} "
                 f"(reference {(ref.summary or {}).get('samples_seen')})")
    if not (ref2 and len(ref2.losses) >= 6):
        lines.append(f"- noise control (a second uninterrupted 2-GPU run) missing: "
                     f"{(ref2.name, ref2.rc, ref2.skipped) if ref2 else 'not in this call'}")
        return lines
    n = max_diff(ref.losses, ref2.losses, 3, 6)
    n_all = max_diff(ref.losses, ref2.losses, 0, 6)
    d2 = max_diff(ref2.losses, b.losses, 3, 6)
    first = "identical" if ref.losses[0] == ref2.losses[0] else f"differs by {abs(ref.losses[0] - ref2.losses[0]):.3g}"
    if n == 0 and d == 0:
        verdict = "the resumed run is bit-identical to both references"
    elif n == 0:
        verdict = ("the two references are bit-identical, the resumed run is not: more than run-to-run noise (1 vs 2 "
                   "processes reduce in a different order)")
    elif d <= n:
        verdict = f"within the run-to-run noise ({d / n:.2f}x the references' difference)"
    else:
        verdict = f"{d / n:.1f}x the references' difference: more than run-to-run noise"
    lines.append(f"- noise control: two uninterrupted 2-GPU runs (same seed) differ by max |dloss| {n:.3g} over steps "
                 f"4-6 ({n_all:.3g} over 1-6; step 1 {first}); resumed vs the second reference {d2:.3g}; resumed vs "
                 f"reference {d:.3g}: {verdict}")
    lines += same_world_lines(by, ref)
    return lines


def same_world_lines(by: dict[str, Job], ref: Job) -> list[str]:
    """The stop at step 3 resumed on 2 GPUs again (bit-identical to the reference where the references are to each
    other), and the world-size control: an uninterrupted 1-GPU run from the same initial weights."""
    lines = []
    c, d, one = by.get("resume-c-2"), by.get("resume-d-2"), by.get("resume-ref-1")
    if d and len(d.losses) >= 6:
        dd = max_diff(ref.losses, d.losses, 0, 6)
        lines.append(f"- resumed on 2 GPUs (stopped at step 3, same world size): steps 1-6 "
                     f"{'bit-identical to the reference' if dd == 0 else f'max |dloss| {dd:.3g} from the reference'}"
                     f"; summary step {(d.summary or {}).get('step')}, samples seen "
                     f"{(d.summary or {}).get('samples_seen')}")
    elif c or d:
        lines.append(f"- resume on 2 GPUs not complete: {[(x.name, x.rc, x.skipped) for x in (c, d) if x]}")
    if one and one.losses and ref.losses:
        w1, k = abs(one.losses[0] - ref.losses[0]), min(6, len(one.losses))
        w = max_diff(ref.losses, one.losses, 0, k)
        b = by.get("resume-b-1")
        b_diff = max_diff(ref.losses, b.losses, 3, 6) if b and len(b.losses) >= 6 and len(ref.losses) >= 6 else None
        cmp = "" if b_diff is None or w is None else (
            f": the 2-to-1 resume's {b_diff:.3g} is {'within' if b_diff <= w else 'beyond'} what the world size alone "
            "does to an uninterrupted run")
        lines.append(f"- world-size control: an uninterrupted 1-GPU run (global batch kept) differs from the 2-GPU "
                     f"reference by |dloss| {w1:.3g} at step 1 (identical weights: forward numerics of 1 vs 2 "
                     f"processes), max {w:.3g} over steps 1-{k}{cmp}")
    return lines


def report(jobs: list[Job], a: argparse.Namespace, total: float, probe: dict, baseline: dict | None) -> str:
    by = {j.name: j for j in jobs}
    one = {(j.model, j.recipe): j for j in jobs if j.stage == "1 GPU"}
    mine = [j.summary for j in jobs if j.summary and not j.origin]
    meta = next(iter(mine), None) or next((j.summary for j in jobs if j.summary), None)
    lines = ["# Multi-GPU `lowbit train` (`bench/multi_gpu.py`)", ""]
    if meta:
        v = meta.get("versions") or {}
        cfg = meta.get("config") or {}
        lines += [f"{meta.get('device')} | torch {v.get('torch')} | triton {v.get('triton')} | {meta.get('precision')} | "
                  f"{a.steps} steps, images/s after the first 5 | data {a.data} ({cfg.get('data', a.data_spec)}), "
                  f"{cfg.get('workers', workers_per_rank(a))} workers per rank | {'compiled' if a.compile else 'eager'} | "
                  + ("runs one at a time | " if a.serial or a.dry else "1-GPU runs side by side (one per GPU), "
                     "2-GPU runs in pairs (GPUs 0,1 and 2,3) | ")
                  + ("CPU smoke test (tiny model, gloo)" if a.dry else f"ViT-B/32 {a.batch_b}, ViT-L/14 {a.batch_l} per GPU"),
                  ""]
    if a.prepared:
        lines += [f"Data: {a.prepared}.", ""]
    if baseline:
        ba = baseline["args"]
        stages = sorted({j.stage for j in jobs if j.origin})
        b_dev = next((j.summary.get("device") for j in jobs if j.origin and j.summary), None)
        warn = []
        if meta and b_dev and mine and b_dev != meta.get("device"):
            warn.append(f"**its device ({b_dev}) is not this call's**: scaling across the two is not meaningful")
        if ba.get("data") != a.data or ba.get("batch_b") != a.batch_b or ba.get("batch_l") != a.batch_l:
            warn.append(f"**other data or batch** (data {ba.get('data')}, ViT-B/32 {ba.get('batch_b')}, ViT-L/14 "
                        f"{ba.get('batch_l')} per GPU)")
        lines += [f"Rows marked 'baseline' (stages {', '.join(stages) or 'none'}) come from an earlier call, "
                  f"`{baseline['path']}` ({ba.get('steps')} steps{', compiled' if ba.get('compile') else ''})"
                  + ("; " + "; ".join(warn) if warn else "") + ".", ""]
    # the baseline's data rate only for the same data (data_rate scales it per worker)
    b_same = baseline and baseline["args"].get("data") == a.data and baseline["probe"].get("data")
    src = "this call's stage 0" if probe.get("data") else ("the baseline's stage 0" if b_same else None)
    rate_probe = probe if probe.get("data") else (baseline["probe"] if src else {})
    p = (rate_probe or {}).get("data") or {}
    rate_text = (f"the data probe's {p.get('images_per_s')} img/s with {p.get('workers')} workers "
                 f"({p.get('per_worker')} per worker; {src})") if src else \
        f"an assumed {RATE_PER_WORKER.get(a.data_kind, '?')} img/s per worker (no data probe)"
    lines += ["Scaling efficiency: images/s per GPU over the 1-GPU run's (same model and recipe). Speed-up: the 8-bit "
              "recipe's images/s over bf16's (same model, GPUs and mode). Peak memory: rank 0. 'data?': images/s "
              f"per GPU above 80% of what one rank's DataLoader delivers ({rate_text}), or the trainer's steps "
              f"waited for data over {100 * DATA_WAIT_FLAG:.0f}% of the time ('data wait'): the data may bound it. "
              "MFU: the trainer's (model FLOPs over the dense bf16 peak, all GPUs). 'stale clock': a summary from "
              "before the trainer timed each step to the end of its GPU work (issue 27): no figure, no ratio. "
              f"FSDP2 8-bit/16-bit gather twins and the resume runs: {', '.join(f'{k}={v}' for k, v in PIN_FP8.items())}.",
              "", "| model | recipe | GPUs | mode | global batch | images/s | per GPU | scaling | speed-up | MFU | "
              "data wait | peak GiB | weight all-gather | run s | note |",
              "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for j in jobs:
        if j.stage in ("resume", "cudagraphs"):
            continue
        s = j.summary or {}
        ips = steady(j)
        per = ips / j.nproc if ips else None
        base = one.get((j.model, j.recipe))
        b_ips = steady(base) if base else None
        eff = f"{100 * per / b_ips:.1f}%" if per and b_ips and j.nproc > 1 else ""
        twin = next((x for x in jobs if x.model == j.model and x.recipe == "bf16" and x.nproc == j.nproc
                     and x.parallel == j.parallel and x.stage == j.stage), None)
        t_ips = steady(twin) if twin and twin is not j else None
        spd = f"{ips / t_ips:.2f}x" if ips and t_ips and j.recipe != "bf16" else ""
        mode = {"none": "-", "ddp": "DDP", "fsdp": "FSDP2"}[j.parallel]
        if j.parallel == "fsdp" and j.recipe != "bf16":
            mode += " 16-bit gather" if "--no-fsdp-8bit-allgather" in j.args else " 8-bit gather"
        ag = ""
        if j.allgather.startswith("8-bit"):
            m = re.search(r"([\d.]+) MiB per full gather instead of ([\d.]+) MiB", j.allgather)
            ag = f"{m.group(1)} MiB (16-bit: {m.group(2)})" if m else j.allgather
        workers = (s.get("config") or {}).get("workers")
        workers = workers_per_rank(a) if workers is None else workers
        note = j.skipped or ("" if j.rc == 0 else f"rc {j.rc}")
        rate = data_rate(rate_probe, a.data_kind, workers)
        wait = s.get("data_wait_frac")
        if (per and rate and per > 0.8 * rate) or (wait is not None and wait > DATA_WAIT_FLAG):
            note = (note + " data?").strip()
        if s and not honest(s):
            note = (note + " stale clock").strip()
        mfu = s.get("mfu_steady")
        if j.origin:
            note = (note + " baseline").strip()
        lines.append(f"| {j.model} | {j.recipe} | {j.nproc} | {mode} | {s.get('global_batch', '-')} | {fmt(ips)} | "
                     f"{fmt(per)} | {eff} | {spd} | {fmt(mfu * 100 if mfu is not None else None, '.1f')} | "
                     f"{fmt(wait * 100 if wait is not None else None, '.1f')} | {fmt(s.get('peak_memory_gb'), '.1f')} | {ag} | "
                     f"{fmt(j.seconds)} | {note} |")
    # 8-bit all-gather: identical losses?
    lines += ["", "8-bit weight all-gather vs 16-bit (same runs, both with "
              f"{', '.join(f'{k}={v}' for k, v in PIN_FP8.items())}; the numerics must be identical):", ""]
    n_lines = len(lines)
    for j in jobs:
        if j.name.endswith("-ag8"):
            k = by.get(j.name[:-1] + "16")
            if k and j.losses and k.losses:
                same = j.losses == k.losses
                d = max(abs(x - y) for x, y in zip(j.losses, k.losses))
                a8, a16 = steady(j), steady(k)
                # step 1's loss is the forward of the same weights: equal iff the 8-bit gather's codes are the 16-bit
                # path's; later steps also carry the backward's run-to-run noise on a GPU (atomics)
                first = "step-1 loss identical" if j.losses[0] == k.losses[0] else \
                    f"step-1 loss differs ({j.losses[0]!r} vs {k.losses[0]!r})"
                lines.append(f"- {j.name[:-4]}: {first}; all {len(j.losses)} steps "
                             f"{'bit-identical' if same else f'max |dloss| {d:.3g}'}; images/s 8-bit {fmt(a8)} vs "
                             f"16-bit {fmt(a16)}" + (f" ({a8 / a16:.3f}x)" if a8 and a16 else "")
                             + (" (baseline)" if j.origin else ""))
    if len(lines) == n_lines:
        lines.append("- none in this call")
    lines += resume_lines(by)
    e, g = by.get("cg-ddp2-eager"), by.get("cg-ddp2-graphs")
    lines += ["", "CUDA graphs with DDP (2 GPUs, ViT-B/32 bf16; the trainer checks the replicas agree after each of "
              "the first 10 steps):", ""]
    if e and g and e.losses and g.losses:
        rel = max(abs(x - y) / abs(y) for x, y in zip(g.losses, e.losses))
        lines.append(f"- reduce-overhead: rc {g.rc}, {len(g.losses)} steps, max relative |dloss| vs eager {rel:.3g}; "
                     f"images/s {fmt(steady(g))} vs eager "
                     f"{fmt(steady(e))} (steady = steps 6+, compile included "
                     "in neither)")
        lines.append(f"- replica check: {g.replica_note or 'no note in the log (not on)'}"
                     f"{'; passed (the run finished)' if g.replica_note and g.rc == 0 else ''}")
    else:
        lines.append(f"- not measured: {[(x.name, x.rc, x.skipped) for x in (e, g) if x]} (see runs/*.log)"
                     if e or g else "- not in this call")
    lines += ["", f"Total {total:.0f} s (this call)."]
    return "\n".join(lines) + "\n"


def job_record(j: Job) -> dict:
    s = j.summary or {}
    summary = {k: s.get(k) for k in SUMMARY_KEYS}
    cfg = s.get("config") or {}
    summary["config"] = {k: cfg.get(k) for k in ("data", "workers", "batch_size", "seed")}
    return {k: v for k, v in asdict(j).items() if k != "summary"} | {"summary": summary}


