#!/usr/bin/env python3
"""Run a list of shell commands N at a time inside a wall-clock budget (GPU calls are capped at 10 minutes).

    python3 experiments/run_jobs.py JOBS.tsv --parallel 6 --budget 500 --job-timeout 240 --log OUT/jobs.tsv

``JOBS.tsv``: one job per line, ``NAME<TAB>COMMAND`` (``#`` comments allowed), in priority order: jobs start in
that order as slots free up. A job starts only while at least ``--min-start`` seconds of the budget are left,
and is killed (its process group: SIGTERM, then SIGKILL) at ``--job-timeout`` or at the end of the budget,
whichever comes first. stdout+stderr of each job go to ``--logdir/NAME.log``. The status of every job
(``ok``, ``failed rc=N``, ``timeout``, ``skipped``) and its seconds are written to ``--log`` as they finish,
so a call that is itself cut short still leaves a record. Exit status 0 (the runs' own files say what happened).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def read_jobs(path: Path) -> list[tuple[str, str]]:
    jobs = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, cmd = line.partition("\t")
        if not sep or not cmd.strip():
            raise SystemExit(f"{path}: expected NAME<TAB>COMMAND, got {line!r}")
        jobs.append((name.strip(), cmd.strip()))
    return jobs


def _kill(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    except ProcessLookupError:
        pass


def run(jobs: list[tuple[str, str]], parallel: int, budget: float, job_timeout: float, min_start: float,
        log: Path, logdir: Path) -> list[dict]:
    t0 = time.monotonic()
    logdir.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("name\tstatus\tseconds\tstart_s\n")
    pending = list(jobs)
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    results = []

    def record(name: str, status: str, secs: float, start: float) -> None:
        results.append({"name": name, "status": status, "seconds": secs})
        with log.open("a") as f:
            f.write(f"{name}\t{status}\t{secs:.1f}\t{start:.1f}\n")
        print(f"[{time.monotonic() - t0:6.1f}s] {name}: {status} ({secs:.1f}s)", flush=True)

    while pending or running:
        now = time.monotonic() - t0
        while pending and len(running) < parallel:
            name, cmd = pending.pop(0)
            if budget - now < min_start:
                record(name, "skipped (budget)", 0.0, now)
                continue
            fh = open(logdir / f"{name.replace('/', '_')}.log", "w")  # noqa: SIM115 - closed when the job ends
            p = subprocess.Popen(cmd, shell=True, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            running[name] = (p, now, fh)
            print(f"[{now:6.1f}s] start {name}", flush=True)
        for name, (p, start, fh) in list(running.items()):
            now = time.monotonic() - t0
            rc = p.poll()
            limit = min(start + job_timeout, budget)
            if rc is None and now < limit:
                continue
            if rc is None:
                _kill(p)
                status = "timeout"
            else:
                status = "ok" if rc == 0 else f"failed rc={rc}"
            fh.close()
            del running[name]
            record(name, status, time.monotonic() - t0 - start, start)
        time.sleep(0.5)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("jobs", type=Path)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--budget", type=float, default=500, help="seconds for the whole list")
    p.add_argument("--job-timeout", type=float, default=300)
    p.add_argument("--min-start", type=float, default=45, help="do not start a job with less budget left")
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--logdir", type=Path, default=None, help="per-job logs (default: next to --log, logs/)")
    a = p.parse_args(argv)
    jobs = read_jobs(a.jobs)
    res = run(jobs, a.parallel, a.budget, a.job_timeout, a.min_start, a.log, a.logdir or a.log.parent / "logs")
    ok = sum(r["status"] == "ok" for r in res)
    print(f"{ok}/{len(res)} jobs ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
