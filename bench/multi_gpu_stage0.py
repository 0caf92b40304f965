"""What runs before ``bench/multi_gpu.py``'s training runs: the data (Fashion-MNIST shards prepared in the
background, or another ``--data``) and stage 0 (the GPUs' topology, NCCL bus bandwidth, the DataLoader's rate, by
``bench/probes/multi_gpu_probe.py``); and the environment every process gets (NVLink multicast off)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from multi_gpu_report import workers_per_rank

ROOT = Path(__file__).resolve().parents[1]
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
FMNIST_SOURCE = ROOT / ".data" / "fashion-mnist"
FMNIST_DIR = ROOT / ".data" / "fmnist"


def base_env(a: argparse.Namespace) -> dict[str, str]:
    return {**os.environ, **{k: os.environ.get(k, v) for k, v in NCCL_ENV.items()},
            "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


# --- data ---------------------------------------------------------------------------------------------------------


def resolve_data(a: argparse.Namespace) -> None:
    """``a.data`` → ``a.data_kind`` (synthetic, fmnist or other) and ``a.data_spec`` (what ``lowbit train`` gets)."""
    a.fmnist_source = Path(a.fmnist_source).resolve() if a.fmnist_source else FMNIST_SOURCE
    a.fmnist_dir = Path(a.fmnist_dir).resolve() if a.fmnist_dir else FMNIST_DIR
    if a.data == "auto":
        have = (a.fmnist_dir / "manifest.json").is_file() or a.fmnist_source.is_dir()
        a.data = "fmnist" if have and not a.dry else "synthetic"
    if a.data == "fmnist":
        a.data_kind, a.data_spec = "fmnist", str(a.fmnist_dir)
    else:
        a.data_kind = "synthetic" if a.data.split(":")[0] == "synthetic" else "other"
        a.data_spec = a.data


def start_prepare(a: argparse.Namespace, out: Path) -> subprocess.Popen | None:
    """``lowbit data prepare fashion-mnist`` in the background (None: nothing to prepare)."""
    if a.data_kind != "fmnist":
        return None
    if (a.fmnist_dir / "manifest.json").is_file():
        a.prepared = f"{a.fmnist_dir} found prepared"
        return None
    if not a.fmnist_source.is_dir():
        raise SystemExit(f"multi_gpu.py: --data fmnist needs the Fashion-MNIST IDX files in {a.fmnist_source} "
                         "(carry .data) or a prepared folder (--fmnist-dir)")
    cmd = [sys.executable, "-m", "lowbit", "data", "prepare", "fashion-mnist", "--source", str(a.fmnist_source),
           "--out", str(a.fmnist_dir), "--force"]
    log = (out / "runs" / "prepare-fmnist.log").open("w")
    log.write(" ".join(cmd) + "\n\n")
    log.flush()
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=base_env(a), cwd=ROOT)
    p.started, p.logfile = time.time(), log  # type: ignore[attr-defined]
    return p


def finish_prepare(p: subprocess.Popen | None, a: argparse.Namespace, out: Path) -> None:
    if p is None:
        return
    try:
        rc = p.wait(timeout=180)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = p.wait()
    p.logfile.close()  # type: ignore[attr-defined]
    took = time.time() - p.started  # type: ignore[attr-defined]
    if rc != 0 or not (a.fmnist_dir / "manifest.json").is_file():
        tail = (out / "runs" / "prepare-fmnist.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"preparing {a.fmnist_dir} from {a.fmnist_source} failed (rc {rc}):\n{tail}")
    a.prepared = f"{a.fmnist_dir} prepared from {a.fmnist_source} in {took:.0f} s"
    print(a.prepared, flush=True)


# --- stage 0 ------------------------------------------------------------------------------------------------------


def json_line(text: str) -> dict | None:
    """The last line of ``text`` that parses as a JSON object (the probes print one)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def run_probe(a: argparse.Namespace, out: Path, prep: subprocess.Popen | None) -> tuple[str, dict]:
    """Stage 0: the GPUs' link (topology, NCCL bus bandwidth; not with ``--probe data``) and the data pipeline's
    rate, as a markdown section and a dict (``nccl_<n>``, ``data``: the probes' JSON lines). The data preparation
    ``prep`` runs meanwhile and is waited for before the data probe."""
    env = base_env(a)
    probe = str(ROOT / "bench" / "probes" / "multi_gpu_probe.py")
    dist = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmds: list[tuple[str, list[str]]] = []
    if a.probe == "all":
        cmds += [("topo", ["nvidia-smi", "topo", "-m"]),
                 (f"nccl_{a.gpus}", [*dist, "--nproc_per_node", str(a.gpus), probe, "--nccl"]),
                 ("nccl_2", [*dist, "--nproc_per_node", "2", probe, "--nccl"])]
    if a.probe in ("all", "data"):
        size = ["--batch-size", "8", "--image-size", "32", "--seconds", "2"] if a.dry else \
            ["--batch-size", str(a.batch_b), "--seconds", "8"]
        cmds.append(("data", [sys.executable, probe, "--data", a.data_spec, "--workers", str(workers_per_rank(a)),
                              *size]))
    lines = ["", "## Stage 0: link and data", ""]
    results: dict = {}
    for key, cmd in cmds:
        if key == "data":
            finish_prepare(prep, a, out)
            prep = None
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
            text = r.stdout.strip() or r.stderr.strip()[-2000:]
        except (OSError, subprocess.TimeoutExpired) as e:
            text = f"failed: {e}"
        results[key] = text if key == "topo" else json_line(text)
        shown = " ".join(Path(c).name if c.startswith("/") else c for c in cmd)
        lines += [f"`{shown}`", "", "```", text, "```", ""]
        print(text, flush=True)
    finish_prepare(prep, a, out)
    return "\n".join(lines) + "\n", results
