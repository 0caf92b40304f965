#!/usr/bin/env python3
"""The one benchmark runner: every committed result file in ``bench/results/h100/`` maps to the one command that
reproduces it (run on a GPU host from the repository root).

    python bench/run.py list                     # every result file: its command, the commit it was committed at
    python bench/run.py run FILE ... --out DIR   # run the jobs making FILE(s); results land in DIR under the
                                                 # committed names, with DIR/env.txt and DIR/logs/
    python bench/run.py run --all --out DIR      # every job, in table order (well over one 10-minute device call)
    python bench/run.py run FILE --dry-run       # print what would run
    python bench/run.py readme                   # rewrite the table in bench/results/h100/README.md
    python bench/run.py check                    # every result file has a job, and the README table is current

Each job sets ``PYTHONPATH=src:/tmp/site`` (no install needed), ``PYTHONUNBUFFERED=1`` and its own environment,
writes the versions and the GPU to ``DIR/env.txt``, installs wheels carried in ``.whl/`` (torchao, for the jobs
that time its training recipes as anchors) into ``/tmp/site`` without network, and stops a command at the job's
time limit. ``$DIR`` in a command is the job's scratch directory (``DIR/work/<job>``).

``commit`` is the commit that last changed the result file (``git log -1 -- FILE``; ``check`` verifies it where
git history is available): the code at that commit is what the file measured. Some files were produced by code that
was changed or reverted in the same device call (the job's ``note`` says so); at a later commit the same command
measures the code of that commit. The result files name the one-off device scripts they came from
(``bench/scripts/gpu_k.sh`` ...); those scripts were replaced by this runner and live in git history
(``git show c85bb6a:bench/scripts/gpu_k.sh``).

Memory of the step benchmarks (fp32 master weights + StableAdamW state = 16 bytes/parameter, plus the activations
autograd saves, measured on the meta device in bf16: ViT-B/32 35 MiB, ViT-L/14 256 MiB, ViT-H/14 452 MiB per image):
ViT-H/14 at batch 96 → 15 GiB + 42 GiB; ViT-L/14 at 128 → 6 GiB + 32 GiB; ViT-B/32 at 256 → 2 GiB + 9 GiB.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "h100"
README = RESULTS / "README.md"
BEGIN, END = "<!-- bench/run.py readme: begin -->", "<!-- bench/run.py readme: end -->"

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the job table beside this script
from run_jobs import BY_FILE, BY_NAME, JOBS, Job  # noqa: E402

__all__ = ["BY_FILE", "BY_NAME", "JOBS", "Job", "check", "main", "run_job"]


def _env_txt() -> str:
    code = ("import platform, torch\ntry:\n    import triton; tv = triton.__version__\nexcept Exception: tv = 'none'\n"
            "dev = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA GPU'\n"
            "print(f'torch {torch.__version__} | triton {tv} | python {platform.python_version()} | {dev}')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=_environ())
    commit = subprocess.run(["git", "log", "-1", "--format=commit %H %s"], capture_output=True, text=True, cwd=ROOT)
    return out.stdout + out.stderr[-500:] + commit.stdout + _tree_line()


def _tree_line() -> str:
    """Which code ran, whatever git says: a device copy can carry a working tree newer than its HEAD (as it did in
    issue #28's session 6), so the line names the files that differ from HEAD and a hash of ``src/`` as it is."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((ROOT / "src").rglob("*.py")):
        h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                            text=True, cwd=ROOT)
    changed = len(status.stdout.splitlines()) if status.returncode == 0 else "unknown"
    return f"src sha256 {h.hexdigest()[:16]}; tracked files differing from that commit: {changed}\n"


def _environ() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), "/tmp/site", env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


WHEEL_NEEDS = ("torchao", "open_clip", "timm")  # packages the device image lacks: carried as wheels in .whl/


def _install_wheels(log: Path) -> None:
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if wheels and not Path("/tmp/site/.lowbit-wheels").exists():
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--target", "/tmp/site", *map(str, wheels)]
        with log.open("a") as f:
            if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode == 0:
                Path("/tmp/site/.lowbit-wheels").touch()


def run_job(job: Job, out: Path, dry_run: bool = False) -> int:
    """Run ``job``'s command under its time limit; copy what it produced to ``out`` under the committed names."""
    work = out / "work" / job.name
    print(f"=== {job.name} → {', '.join(job.files) or '(no committed file)'} (limit {job.timeout} s)", flush=True)
    print(job.command.replace("$DIR", str(work)), flush=True)
    if dry_run:
        return 0
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (out / "logs").mkdir(exist_ok=True)
    log = out / "logs" / f"{job.name}.log"
    env = _environ() | {"DIR": str(work)}
    t0 = time.time()
    command = job.command.replace("python3 ", f"{shlex.quote(sys.executable)} ")  # this interpreter
    with log.open("w") as f:
        # own process group, so that a command cut by the limit takes its children (the benchmark) with it
        proc = subprocess.Popen(["bash", "-c", f"set -o pipefail\n{command}"], cwd=ROOT, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=job.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = 124
    for name, source in job.produces.items():
        src = log if source == "log" else work / source
        if src.is_file():
            shutil.copyfile(src, out / name)
        else:
            print(f"    missing {source} (for {name})", flush=True)
    print(f"    rc={rc} after {time.time() - t0:.0f} s; log {log}", flush=True)
    return rc


def join_steps(directory: str, stages: list[str]) -> str:
    """``step.md``: the stages' tables one after another (as the step benchmark's summary)."""
    lines = [f"# lowbit bench step — {_env_txt().splitlines()[0]}", ""]
    for stage in stages:
        md = Path(directory) / stage / "step.md"
        if md.is_file():
            lines += [f"### {stage}", *md.read_text().splitlines()[4:], ""]
    return "\n".join(lines)


def readme_table() -> str:
    rows = ["| file | what | command (`python bench/run.py run FILE`) | commit | from |", "|---|---|---|---|---|"]
    for job in JOBS:
        if not job.files:
            continue
        files = ", ".join(f"`{f}`" for f in job.files)
        command = "<br>".join(f"`{c}`" for c in job.command.replace("$DIR", "DIR").split("\n"))
        what = job.what + (f"; {job.note}" if job.note else "") + (f"; *needs {job.needs}*" if job.needs else "")
        if job.invalid:
            what = f"**invalid until re-measured**: {job.invalid}" + (
                f" (superseded by `{job.superseded_by}`)" if job.superseded_by else "") + f". {what}"
        if job.annotated:
            what += f"; *corrected by hand after it was measured*: {job.annotated}"
        commit = f"`{job.commit}`" if job.commit else "*not measured yet*"
        rows.append(f"| {files} | {what} | {command} | {commit} | {job.origin} |")
    return "\n".join(rows)


def write_readme() -> None:
    text = README.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    README.write_text(f"{head}{BEGIN}\n{readme_table()}\n{END}{tail}")


INVALID_MARK = "invalid until re-measured"  # near the top of an invalid job's .md files (any case)


def check() -> list[str]:
    """Problems: result files without a job, jobs naming missing files (a job not measured yet, ``commit=""``,
    may), a stale README, wrong commits, invalid files without their mark."""
    problems = []
    on_disk = {p.name for p in RESULTS.iterdir() if p.is_file() and p.name != "README.md"}
    problems += [f"{f}: no job in bench/run.py makes it" for f in sorted(on_disk - set(BY_FILE))]
    problems += [f"{f}: job {BY_FILE[f].name} names it, but it is not in {RESULTS}"
                 for f in sorted(set(BY_FILE) - on_disk) if BY_FILE[f].commit]
    for f, job in sorted(BY_FILE.items()):
        if job.invalid and f in on_disk and f.endswith(".md") and \
                INVALID_MARK not in (RESULTS / f).read_text()[:2000].lower():
            problems.append(f"{f}: job {job.name} is invalid, but the file does not say so at its top")
    problems += [f"job {job.name}: its files come from $DIR, but its command never names $DIR" for job in JOBS
                 if any(src != "log" for src in job.produces.values()) and "$DIR" not in job.command]
    text = README.read_text()
    if f"{BEGIN}\n{readme_table()}\n{END}" not in text:
        problems.append(f"{README} is out of date: run `python bench/run.py readme`")
    if (ROOT / ".git").exists():
        for f, job in sorted(BY_FILE.items()):
            history = subprocess.run(["git", "log", "--format=%h", "--abbrev=7", "--", str(RESULTS / f)],
                                     capture_output=True, text=True, cwd=ROOT).stdout.split()
            # an invalid or annotated file was edited after it was measured: its measuring commit is in its history
            edited = job.invalid or job.annotated
            if history and (job.commit not in history if edited else history[0] != job.commit):
                problems.append(f"{f}: last committed at {history[0]}, bench/run.py says {job.commit or '(none)'}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every result file with its command and commit")
    p = sub.add_parser("run", help="run the jobs that make the given result files (or job names)")
    p.add_argument("targets", nargs="*", help="result file names (e.g. step-vit-b-32-cudagraphs.md) or job names")
    p.add_argument("--all", action="store_true", help="every job")
    p.add_argument("--out", default="/tmp/lowbit-bench", help="where the results go (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    sub.add_parser("readme", help=f"rewrite the table in {README.relative_to(ROOT)}")
    sub.add_parser("check", help="every result file has a job; the README table is current")
    p = sub.add_parser("join-steps", help="(used by the step job) join stage tables into step.md")
    p.add_argument("dir")
    p.add_argument("stages", nargs="+")
    args = parser.parse_args(argv)

    if args.action == "list":
        for job in JOBS:
            print(f"{', '.join(job.files) or '(none yet)'}  [commit {job.commit or '-'}; {job.name}]")
            print("    " + job.command.replace("\n", "\n    "))
        return 0
    if args.action == "readme":
        write_readme()
        return 0
    if args.action == "check":
        problems = check()
        print("\n".join(problems) or "ok: every result file has its command, and the README is current")
        return 1 if problems else 0
    if args.action == "join-steps":
        print(join_steps(args.dir, args.stages))
        return 0
    try:
        names = dict.fromkeys((BY_FILE.get(t) or BY_NAME[t]).name for t in args.targets)
        jobs = JOBS if args.all else [BY_NAME[n] for n in names]
    except KeyError as e:
        parser.error(f"unknown result file or job {e.args[0]!r}; see `python bench/run.py list`")
    if not jobs:
        parser.error("name result files or jobs to run, or --all")
    out = Path(args.out)
    if not args.dry_run:
        out.mkdir(parents=True, exist_ok=True)
        if any(j.needs in WHEEL_NEEDS for j in jobs):
            _install_wheels(out / "pip.log")
        (out / "env.txt").write_text(_env_txt())
    for j in [j for j in jobs if j.superseded_by]:
        print(f"=== {j.name}: its script is gone; run {j.superseded_by} instead "
              f"(`python bench/run.py run {j.superseded_by}`)", flush=True)
    jobs = [j for j in jobs if not j.superseded_by]
    failed = [j.name for j in jobs if run_job(j, out, args.dry_run) != 0]
    if failed:
        print(f"failed or cut by their limit: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
