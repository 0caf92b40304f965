"""Inject the faults of issue 32 into real `lowbit train` processes on the CPU and print what happened.

    PYTHONPATH=src python experiments/faults.py [--out DIR] [--only NAME ...]

Every fault runs `--preset tiny` (1-layer towers, batch 8, 1 thread, gloo for two processes) in a scratch folder
and prints one row of a markdown table: the fault, what lowbit did, what was lost. docs/faults.md holds the table
of the last run. Takes about 5-10 minutes on 2 busy CPU cores; `--only lock kill9` runs a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
PY = sys.executable
TRAIN = [PY, "-m", "lowbit", "train"]
TORCHRUN = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lowbit", "train"]
TINY = ["--preset", "tiny", "--device", "cpu", "--warmup", "1", "--zeroshot", "none", "--no-progress", "--threads", "1",
        "--recipe", "none", "--optimizer", "adamw", "--batch-size", "8", "--set", "model.vision.layers=1",
        "--set", "model.text.layers=1"]
LONG = [*TINY, "--steps", "5000", "--save-every", "0"]  # runs until signalled


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def _rows(run: Path) -> list[int]:
    path = run / "metrics.csv"
    if not path.is_file():
        return []
    return [int(line.split(",")[0]) for line in path.read_text().splitlines()[1:] if line]


def _wait_rows(run: Path, proc: subprocess.Popen, n: int = 3, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if len(_rows(run)) >= n:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{run}: no {n} metrics rows (exit {proc.poll()})")


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _tail(line: str, n: int = 150) -> str:
    """A lowbit line without its ``lowbit train: `` prefix and temporary paths, cut at ``n`` characters."""
    text = line.strip().removeprefix("lowbit train: ").replace(tempfile.gettempdir() + "/", "")
    return text if len(text) <= n else text[: n - 3] + "..."


def _steps_exact(rows: list[int]) -> str:
    return "nothing (each step logged once)" if rows == list(range(1, len(rows) + 1)) else f"rows {rows[:5]}..."


def _ckpt_step(run: Path) -> int:
    return int(torch.load(run / "checkpoint.pt", weights_only=True)["step"])


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _ranks(launcher: int) -> dict[int, int]:
    found = {}
    for pid in [c for p in _children(launcher) for c in [p, *_children(p)]]:
        try:
            env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = next((int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"RANK=")), None)
        if rank is not None:
            found[rank] = pid
    return found


# ------------------------------------------------------------------------------------------------------ faults
def lock(d: Path) -> tuple[str, str, str]:
    run = d / "run"
    a = _start([*TRAIN, *LONG, "--out", str(run)])
    _wait_rows(run, a)
    b = _run([*TRAIN, *LONG, "--out", str(run)])
    a.send_signal(signal.SIGTERM)
    a.communicate(timeout=120)
    c = _start([*TRAIN, "--resume", str(run), "--no-progress", "--threads", "1"])
    _wait_rows(run, c, len(_rows(run)) + 2)
    r = _run([*TRAIN, "--resume", str(run), "--no-progress"])
    c.send_signal(signal.SIGTERM)
    c.communicate(timeout=120)
    return ("two runs with the same `--out`; `--resume` of a live run",
            f"the second start exits {b.returncode}: `{_tail(_last_line(b.stderr), 200)}`; the resume exits {r.returncode}, "
            "same line",
            _steps_exact(_rows(run)))


def kill9(d: Path) -> tuple[str, str, str]:
    run = d / "run"
    a = _start([*TRAIN, *LONG, "--out", str(run), "--save-every", "5"])
    _wait_rows(run, a, 12)
    a.kill()
    a.communicate(timeout=60)
    left = sorted(p.name for p in run.iterdir())
    step = _ckpt_step(run)
    (run / ".checkpoint.pt.killed.tmp").write_bytes(b"\0" * 4_000_000)  # a save the kill interrupted
    r = _run([*TRAIN, "--resume", str(run), "--stop-at", str(step + 3), "--no-progress", "--threads", "1"])
    said = [ln for ln in r.stdout.splitlines() if "took over" in ln or "temporary" in ln]
    return ("`kill -9` mid-run (lock file and a save's temp file left behind), then `--resume`",
            f"left {', '.join(left)}; resume exits {r.returncode} and says: " + " / ".join(f"`{_tail(s)}`" for s in said),
            f"the steps after the last checkpoint (step {step}); {_steps_exact(_rows(run))}")


_REWRITER = """
import sys
from lowbit.train.metrics import CSVLog
log = CSVLog(sys.argv[1])
print("ready", flush=True)
while True:
    log.truncate_after(10**9)
"""


def rewrite(d: Path) -> tuple[str, str, str]:
    path = d / "metrics.csv"
    cols = ["step", "loss"] + [f"rms/p{i}" for i in range(40)]
    rows = [",".join(cols)] + [",".join([str(s), *(f"{0.001 * s * i:.6f}" for i in range(41))]) for s in range(1, 1500)]
    path.write_bytes(("\r\n".join(rows) + "\r\n").encode())
    before, rng, whole = path.read_bytes(), random.Random(0), 0
    tries = 8
    for _ in range(tries):
        p = subprocess.Popen([PY, "-c", _REWRITER, str(path)], stdout=subprocess.PIPE, text=True, env=_env())
        p.stdout.readline()
        time.sleep(rng.uniform(0.05, 0.4))
        p.kill()
        p.wait()
        whole += path.read_bytes() == before
    return (f"`kill -9` while metrics.csv ({len(before) // 1000} KB) is rewritten (a resume's truncation), {tries} times",
            f"the file was whole after {whole} of {tries} kills", "nothing" if whole == tries else "the loss history")


def _png(size: tuple[int, int], colour: tuple[int, int, int] = (5, 6, 7)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _bad_data(data: Path, n: int = 400) -> None:
    """One shard, every 16th image undecodable (6%)."""
    from lowbit.data.tars import write_shard

    data.mkdir(parents=True)
    write_shard(data / "000.tar", [(f"{i:04d}", {"png": b"\x89PNG broken" if i % 16 == 3 else _png((24, 24), (i % 256, 9, 9)),
                                                 "txt": b"x"}) for i in range(n)])


def workers(d: Path) -> tuple[str, str, str]:
    data = d / "data"
    _bad_data(data)
    seen = {}
    for w in (0, 2):
        out = d / f"w{w}"
        r = _run([*TRAIN, *TINY, "--steps", "6", "--data", str(data), "--workers", str(w), "--out", str(out)])
        if r.returncode:
            return ("6%-bad data, `--workers 0` vs `2`", f"failed: {_last_line(r.stderr)}", "?")
        seen[w] = json.loads((out / "summary.json").read_text())["data"]["skipped_images"]
    return ("6%-bad images, `--workers 0` vs `--workers 2` (6 steps x 8)",
            f"skipped {seen[0]} vs {seen[2]}: the same count (only consumed samples count)", "nothing")


def shards(d: Path) -> tuple[str, str, str]:
    data = d / "data"
    _bad_data(data, 100)
    (data / "001.tar").write_bytes(b"")
    (data / "002.tar").write_bytes((data / "000.tar").read_bytes()[:300])
    r = _run([*TRAIN, *TINY, "--steps", "1", "--data", str(data), "--out", str(d / "run")])
    said = next((ln for ln in r.stdout.splitlines() if "without a usable sample" in ln), "(nothing)")
    n = json.loads((d / "run" / "summary.json").read_text())["data"].get("empty_shards") if r.returncode == 0 else "?"
    return ("an empty shard and one cut inside its first header", f"warned: `{_tail(said)}`; summary.json "
            f"data.empty_shards = {n}", "nothing unsaid")


def sigterm_all(d: Path) -> tuple[str, str, str]:
    run = d / "run"
    p = _start([*TORCHRUN, *LONG, "--batch-size", "32", "--out", str(run)])
    _wait_rows(run, p)
    for pid in _ranks(p.pid).values():
        os.kill(pid, signal.SIGTERM)
    time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=180)
    s = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    saved = (run / "checkpoint.pt").is_file() and _ckpt_step(run) == s.get("step")
    return ("SIGTERM to both ranks, then (50 ms later) to torchrun, which forwards it",
            f"status {s.get('status', 'none')}, checkpoint of step {s.get('step')} saved: {saved}"
            + ("; aborted" if "aborted without saving" in err else ""),
            "nothing" if saved else "the steps since the last checkpoint")


def frozen(d: Path) -> tuple[str, str, str]:
    run = d / "run"
    p = _start([*TORCHRUN, *LONG, "--dist-timeout", "10", "--out", str(run)])
    _wait_rows(run, p)
    ranks = _ranks(p.pid)
    os.kill(ranks[1], signal.SIGSTOP)
    t0 = time.time()
    try:
        _, err = p.communicate(timeout=180)
    finally:
        for pid in ranks.values():
            with __import__("contextlib").suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    line = next((ln for ln in err.splitlines() if "timed out" in ln), _last_line(err))
    return ("SIGSTOP of rank 1 (frozen), `--dist-timeout 10`",
            f"torchrun exits after {time.time() - t0:.0f} s (the rank's line at ~10 s, then torchrun's 30 s to kill a "
            f"stopped process): `{_tail(line, 260)}`", "the steps since the last checkpoint")


def dcp(d: Path) -> tuple[str, str, str]:
    run = d / "run"
    r = _run([*TORCHRUN, *TINY, "--steps", "6", "--stop-at", "4", "--save-every", "2", "--parallel", "fsdp",
              "--out", str(run)], timeout=600)
    if r.returncode:
        return ("a flipped bit in an FSDP checkpoint", f"setup failed: {_last_line(r.stderr)}", "?")
    f = sorted((run / "checkpoint.dcp").glob("*.distcp"))[0]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))
    r = _run([*TORCHRUN, "--resume", str(run), "--parallel", "fsdp", "--no-progress", "--threads", "1"], timeout=600)
    warn = next((ln for ln in r.stderr.splitlines() if "SHA-256" in ln), "(no warning)")
    return ("one flipped bit in `checkpoint.dcp/*.distcp` (FSDP), then `--resume`",
            f"exit {r.returncode}; `{_tail(warn[warn.find('checkpoint '):], 160)}`",
            f"steps 3-4 (resumed from checkpoint.prev.dcp, step 2); {_steps_exact(_rows(run))}")


def bitflip(d: Path) -> tuple[str, str, str]:
    run = d / "run"
    r = _run([*TRAIN, *TINY, "--steps", "6", "--stop-at", "4", "--save-every", "2", "--out", str(run)])
    if r.returncode:
        return ("a flipped bit in checkpoint.pt", f"setup failed: {_last_line(r.stderr)}", "?")
    f = run / "checkpoint.pt"
    data = bytearray(f.read_bytes())
    data[len(data) * 2 // 3] ^= 0x10
    f.write_bytes(bytes(data))
    r = _run([*TRAIN, "--resume", str(run), "--no-progress", "--threads", "1"])
    warn = next((ln for ln in r.stderr.splitlines() if "checkpoint" in ln), "(no warning)")
    return ("one flipped bit in `checkpoint.pt`, then `--resume`", f"exit {r.returncode}; `{_tail(warn, 160)}`",
            f"steps 3-4 (resumed from checkpoint.prev.pt); {_steps_exact(_rows(run))}")


def big_image(d: Path) -> tuple[str, str, str]:
    from lowbit.data.tars import write_shard

    data = d / "data"
    data.mkdir()
    small = _png((24, 24))
    write_shard(data / "000.tar", [*((f"{i:04d}", {"png": small, "txt": b"x"}) for i in range(63)),
                                   ("huge", {"png": _png((6000, 6000)), "txt": b"36 MP"})])
    t0 = time.time()
    r = _run([*TRAIN, *TINY, "--steps", "8", "--data", str(data), "--out", str(d / "run")])
    s = json.loads((d / "run" / "summary.json").read_text())["data"] if r.returncode == 0 else {}
    return ("a 6000x6000 PNG (36 MP) among small images, default `--max-image-pixels` (33.5 MP)",
            f"exit {r.returncode} in {time.time() - t0:.0f} s; skipped_large_images = {s.get('skipped_large_images')}, "
            f"no PIL warning: {'DecompressionBomb' not in r.stderr}", "that image (counted)")


def threads(d: Path) -> tuple[str, str, str]:
    run = d / "run"
    r = _run([*TRAIN, *TINY, "--steps", "4", "--stop-at", "2", "--out", str(run)])
    rec = torch.load(run / "checkpoint.pt", weights_only=True).get("threads") if r.returncode == 0 else None
    a = _run([*TRAIN, "--resume", str(run), "--no-progress", "--threads", "0", "--stop-at", "3"])
    b = _run([*TRAIN, "--resume", str(run), "--no-progress", "--threads", "2"])
    lines = [ln for out in (a.stdout, b.stdout) for ln in out.splitlines() if "thread(s)" in ln or "--threads" in ln]
    return ("resume with `--threads 0` (automatic, load-dependent) and with `--threads 2`",
            f"the checkpoint records threads = {rec}; " + " / ".join(f"`{_tail(ln)}`" for ln in lines),
            "nothing (auto keeps the count; another count is warned about)")


FAULTS: dict[str, Callable[[Path], tuple[str, str, str]]] = {
    "lock": lock, "kill9": kill9, "rewrite": rewrite, "workers": workers, "shards": shards,
    "sigterm_all": sigterm_all, "frozen": frozen, "dcp": dcp, "bitflip": bitflip, "big_image": big_image,
    "threads": threads,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="scratch folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--only", nargs="*", choices=list(FAULTS), help="run only these faults")
    args = parser.parse_args()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="lowbit-faults-"))
    print("| fault | what happened | what was lost |\n|---|---|---|", flush=True)
    try:
        for name in args.only or FAULTS:
            d = root / name
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            t0 = time.time()
            try:
                fault, happened, lost = FAULTS[name](d)
            except Exception as e:  # a fault script that broke: say so in its row
                fault, happened, lost = name, f"the injection failed: {type(e).__name__}: {e}", "?"
            print(f"| {fault} | {happened.replace('|', '/')} | {lost} |", flush=True)
            print(f"<!-- {name}: {time.time() - t0:.0f} s -->", file=sys.stderr, flush=True)
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
