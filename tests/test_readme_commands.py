"""Every command in the README (and in docs/guide.md, where it sends a user), pasted and run as a user would: a ``bash`` subprocess in an empty folder, the
package on ``PYTHONPATH`` (no venv, no install), no network (a ``sitecustomize`` refuses every non-loopback
connection), shortened only by flags appended at the end (fewer steps, smaller batches and models: argparse
takes the last value) or by a stand-in for data that would be downloaded.

Skipped, and why (``SKIPPED`` below): the set-up steps that create a venv and install from the network, the test
suite itself (this test is part of it), ``apt-get``/``npm install`` (system and network installs; the commands that
use what they install run on stand-in files of the same format), and what needs a GPU (CUDA graphs) or torchrun
with more than one process. A README command this file does not know fails ``test_every_readme_command_is_covered``.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import re
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = "--no-progress --threads 1"
SMALL_MODEL = "--set model.vision.layers=1 --set model.text.layers=1"

# README command (as written, trailing comment dropped) -> what to append to it (None: run as written)
RUN: dict[str, str | None] = {
    "lowbit train": f"--steps 3 --warmup 1 --batch-size 8 --zeroshot-limit 8 --out runs/main {QUICK}",
    "lowbit train --preset vit-b-32 --recipe fp8-switchback --optimizer stableadamw --data 'shards/{000..099}.tar'":
        f"--steps 1 --warmup 0 --batch-size 2 --zeroshot-limit 2 {SMALL_MODEL} --out runs/b32 {QUICK}",
    "lowbit plot runs/<run>": None,
    "lowbit data prepare fashion-mnist --out data/fmnist": "--source fmnist-src",
    "lowbit bench linear --shapes vit-h-14": "--tokens 64 --recipes switchback",
    # run with a stand-in `timm` (STANDIN_TIMM) on PYTHONPATH: timm is not a dependency and is not installed here
    "lowbit bench model --model timm:vit_base_patch16_224 --recipe bf16 fp8-switchback":
        "--batch-size 2 --steps 1 --warmup 1 --layers all --device cpu --no-anchors --out runs/bench-model",
    "lowbit data prepare emoji --out DIR": None,
    # the GPU quick start at tiny size on the CPU (after the Fashion-MNIST preparation above)
    "lowbit train --preset vit-h-14 --batch-size 96 --recipe fp8-switchback --data data/fmnist --workers 14 "
    "--out runs/vit-h": f"--preset tiny --batch-size 4 --steps 2 --warmup 1 --workers 1 --zeroshot-limit 4 {QUICK}",
    "python -m lowbit train --resume runs/a": QUICK,
}
SKIPPED: dict[str, str] = {
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e . && lowbit train":
        "creates a venv and installs from the network; its last command, `lowbit train`, runs above",
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e ".[dev]" && pip install --no-deps -r tests/third-party.txt && python -m pytest -q':
        "creates a venv, installs from the network and runs the whole test suite (which this file is part of)",
    "lowbit bench step --preset vit-h-14 --batch-size 96 --compile --cudagraphs --layers auto --recipe bf16 "
    "fp8-switchback:fused":
        "needs a GPU (--cudagraphs); the same command without --compile --cudagraphs at tiny size runs instead",
    "torchrun --nproc_per_node 2 -m lowbit train --preset vit-b-32 --batch-size 128 --parallel ddp  --out runs/ddp":
        "torchrun with 2 processes (GPUs); the 2-process paths have their CPU tests in tests/train",
    "torchrun --nproc_per_node 2 -m lowbit train --preset vit-b-32 --batch-size 128 --parallel fsdp --out runs/fsdp":
        "torchrun with 2 processes (GPUs)",
    "torchrun --nproc_per_node 2 -m lowbit train --parallel fsdp --stop-at 100 --out runs/a":
        "torchrun with 2 processes; a one-process run stands in for it before the resume command",
    "apt-get install dataset-fashion-mnist": "a system install; its IDX files are stood in for",
    "npm install emoji-datasource-google": "a network install; its emoji.json + PNGs are stood in for",
    "python3 bench/multi_gpu.py --out $OUT": "needs 4 GPUs (its --dry mode is tests/bench/test_multi_gpu_script.py)",
    'python3 bench/multi_gpu.py --out "$OUT" --data fmnist --only 1,big':
        "needs 4 GPUs (its --dry mode is tests/bench/test_multi_gpu_script.py, --only and --baseline included)",
    'python3 bench/multi_gpu.py --out "$OUT" --data fmnist --only resume,2,cudagraphs --probe none --baseline '
    'FIRST/multi_gpu.json': "needs 4 GPUs and the first call's multi_gpu.json",
    'python3 bench/multi_gpu.py --out "$OUT" --data fmnist --only 1,big,cudagraphs,resume --probe data --budget 545':
        "needs 2 GPUs and the carried Fashion-MNIST IDX files",
    "lowbit bench model --model open_clip:ViT-H-14 --batch-size 96 --recipe bf16 fp8-switchback fp8-switchback:fused "
    "--compile --cudagraphs":
        "open_clip's ViT-H-14 training step with CUDA graphs for an H100 / H200 (tests/bench/test_bench_model_real.py runs the real "
        "open_clip at a tiny config)",
    "lowbit bench model --model timm:vit_huge_patch14_clip_224 --batch-size 64 --recipe bf16 fp8-switchback:per-linear "
    "fp8-switchback:fused --no-anchors --out runs/bench-timm-vit-h":
        "a ViT-H/14 training step for an H100 and the real timm; the quick start's `lowbit bench model` runs instead",
    "lowbit bench model --model 'hf:clip:vision.hidden_size=1280,vision.intermediate_size=5120,"
    "vision.num_hidden_layers=32,vision.num_attention_heads=16,vision.patch_size=14,vision.image_size=224,"
    "text.hidden_size=1024,text.intermediate_size=4096,text.num_hidden_layers=24,text.num_attention_heads=16,"
    "projection_dim=1024' --batch-size 64 --recipe bf16 fp8-switchback:per-linear fp8-switchback:fused --no-anchors "
    "--out runs/bench-hf-clip-h":
        "a ViT-H-wide CLIP for an H100 and the real transformers (not installed here); the hf: path runs on a "
        "stand-in in tests/bench/test_bench_model.py",
}
# commands the README gives inline (in prose, `...`) rather than in a code block
INLINE = ["lowbit data prepare emoji --out DIR", "apt-get install dataset-fashion-mnist",
          "npm install emoji-datasource-google", "python3 bench/multi_gpu.py --out $OUT"]


# the pages whose commands a user pastes: the README and the guide it sends them to
PAGES = ("README.md", "docs/guide.md")


def readme_commands() -> list[str]:
    """The commands of the bash blocks of PAGES (one per line, trailing ``# comment`` dropped) plus INLINE."""
    text = "\n".join((ROOT / page).read_text() for page in PAGES)
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line:
                commands.append(line)
    for command in INLINE:
        assert f"`{command}`" in text or command in text, f"README no longer mentions {command!r}: update {__file__}"
    return commands + INLINE


def test_every_readme_command_is_covered() -> None:
    unknown = [c for c in readme_commands() if c not in RUN and c not in SKIPPED]
    assert not unknown, f"README commands this test neither runs nor skips (add them to RUN or SKIPPED): {unknown}"


# ---- the workspace: an empty folder with stand-ins for downloaded data -------------------------------------
def _png(colour: tuple[int, ...], size: int = 24, mode: str = "RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _stand_ins(ws: Path) -> None:
    from lowbit.data.tars import write_shard

    (ws / "shards").mkdir()
    for s in range(100):  # shards/{000..099}.tar, two image-caption pairs each
        write_shard(ws / "shards" / f"{s:03d}.tar",
                    [(f"{s:03d}{i}", {"png": _png((2 * s, 120 * i, 0)), "txt": f"a red square, {s}".encode()})
                     for i in range(2)])  # fmt: skip
    src = ws / "fmnist-src"  # what `apt-get install dataset-fashion-mnist` installs: IDX files
    src.mkdir()
    for split, n in (("train", 12), ("t10k", 6)):
        labels = np.arange(n) % 10
        _idx(src / f"{split}-images-idx3-ubyte.gz", np.stack([np.full((28, 28), 20 * y, np.uint8) for y in labels]))
        _idx(src / f"{split}-labels-idx1-ubyte.gz", labels)
    pkg = ws / "node_modules" / "emoji-datasource-google"  # what `npm install emoji-datasource-google` installs
    (pkg / "img" / "google" / "64").mkdir(parents=True)
    entries = []
    for order, (name, cat) in enumerate([("GRINNING FACE", "Smileys & Emotion"), ("WINKING FACE", "Smileys & Emotion"),
                                         ("DOG FACE", "Animals & Nature"), ("OAK TREE", "Animals & Nature"),
                                         ("JAPAN FLAG", "Flags"), ("PIRATE FLAG", "Flags")], start=1):  # fmt: skip
        code = f"1F{order:03X}"
        entries.append({"name": name, "unified": code, "image": f"{code.lower()}.png", "category": cat,
                        "short_name": name.lower().replace(" ", "_"), "subcategory": "x", "sort_order": order,
                        "has_img_google": True})  # fmt: skip
        (pkg / "img" / "google" / "64" / f"{code.lower()}.png").write_bytes(_png((40 * order, 90, 200, 255), 64, "RGBA"))
    (pkg / "emoji.json").write_text(json.dumps(entries))
    (pkg / "package.json").write_text('{"name": "emoji-datasource-google", "version": "0.0.1"}')


OFFLINE = '''
import socket
_connect = socket.socket.connect
def _local_only(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("/"):
        raise OSError(f"README test: no network ({address!r})")
    return _connect(self, address)
socket.socket.connect = _local_only
'''


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("readme")
    _stand_ins(ws)
    tools = ws / ".tools"
    tools.mkdir()
    for name, target in (("lowbit", f"{shlex.quote(sys.executable)} -m lowbit"), ("python", shlex.quote(sys.executable)),
                         ("python3", shlex.quote(sys.executable))):  # fmt: skip
        (tools / name).write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        (tools / name).chmod(0o755)
    (tools / "sitecustomize.py").write_text(OFFLINE)
    return ws


def sh(ws: Path, command: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PATH"] = f"{ws / '.tools'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ws / ".tools")])
    env.pop("LOWBIT_BPE_VOCAB", None)
    return subprocess.run(["bash", "-c", command], cwd=ws, env=env, capture_output=True, text=True, timeout=timeout)


def run_readme(ws: Path, command: str, extra: str | None = None) -> subprocess.CompletedProcess[str]:
    assert command in readme_commands(), f"not a README command: {command!r}"
    proc = sh(ws, f"{command} {extra or ''}".strip())
    assert proc.returncode == 0, f"{command!r} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _main_run(ws: Path) -> Path:
    if not (ws / "runs" / "main" / "summary.json").is_file():
        run_readme(ws, "lowbit train", RUN["lowbit train"])
    return ws / "runs" / "main"


# ---- the commands ------------------------------------------------------------------------------------------
def test_main_job(workspace: Path) -> None:
    summary = json.loads((_main_run(workspace) / "summary.json").read_text())
    assert summary["step"] == 3 and "shape" in summary["zeroshot"]


def test_vit_b_32_on_shards_with_the_bpe_tokenizer(workspace: Path) -> None:
    command = "lowbit train --preset vit-b-32 --recipe fp8-switchback --optimizer stableadamw --data 'shards/{000..099}.tar'"
    run_readme(workspace, command, RUN[command])
    summary = json.loads((workspace / "runs" / "b32" / "summary.json").read_text())
    assert summary["step"] == 1 and summary["recipe"] == "fp8-switchback"


def test_plot(workspace: Path) -> None:
    run = _main_run(workspace)
    assert "lowbit plot runs/<run>" in readme_commands()
    out = sh(workspace, f"lowbit plot runs/{run.name}")  # the README's `runs/<run>`, named
    assert out.returncode == 0, out.stderr[-3000:]
    assert {"loss.png", "lr.png", "zeroshot.png"} <= {p.name for p in (run / "plots").iterdir()}


def test_data_prepare_fashion_mnist_then_its_train_command(workspace: Path) -> None:
    command = "lowbit data prepare fashion-mnist --out data/fmnist"
    out = run_readme(workspace, command, RUN[command]).stdout.strip().splitlines()
    train = out[-1].strip()
    assert train.startswith("lowbit train --data data/fmnist"), out
    proc = sh(workspace, f"{train} --steps 2 --warmup 1 --batch-size 4 --out runs/fmnist {QUICK}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((workspace / "runs" / "fmnist" / "summary.json").read_text())
    assert list(summary["zeroshot"]) == ["fashion-mnist"]  # the prepared folder brought its own task


def test_gpu_quick_start_on_fashion_mnist(workspace: Path) -> None:
    if not (workspace / "data" / "fmnist" / "manifest.json").is_file():
        prepare = "lowbit data prepare fashion-mnist --out data/fmnist"
        run_readme(workspace, prepare, RUN[prepare])
    command = ("lowbit train --preset vit-h-14 --batch-size 96 --recipe fp8-switchback --data data/fmnist --workers 14 "
               "--out runs/vit-h")
    first = run_readme(workspace, command, RUN[command]).stdout.splitlines()[0]
    assert "recipe fp8-switchback" in first and "eager (auto: CPU)" in first, first
    summary = json.loads((workspace / "runs" / "vit-h" / "summary.json").read_text())
    assert summary["step"] == 2 and list(summary["zeroshot"]) == ["fashion-mnist"]


def test_data_prepare_emoji(workspace: Path) -> None:
    command = "lowbit data prepare emoji --out DIR"
    run_readme(workspace, command)
    assert (workspace / "DIR" / "manifest.json").is_file()


def test_bench_linear_on_the_cpu_warns(workspace: Path) -> None:
    command = "lowbit bench linear --shapes vit-h-14"
    proc = run_readme(workspace, command, RUN[command])
    assert "switchback" in proc.stdout
    assert "CPU timings say nothing about the GPU speed-ups" in proc.stderr


def test_bench_step_without_cuda_graphs(workspace: Path) -> None:
    """The README's `lowbit bench step ...` needs a GPU (--cudagraphs); its CPU twin at tiny size runs."""
    proc = sh(workspace, "lowbit bench step --preset tiny --batch-size 4 --steps 1 --warmup 1 --layers auto "
                         "--recipe bf16 fp8-switchback:fused --no-anchors --device cpu")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fp8-switchback:fused" in proc.stdout


# What the README's `lowbit bench model --model timm:...` imports: create_model giving a tiny ViT-like model
# (Linear -> GELU -> Linear MLPs in repeated blocks) whatever the name; pretrained_cfg gives its input size.
STANDIN_TIMM = '''
import torch
from torch import nn

class Mlp(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, h), nn.GELU(), nn.Linear(h, d)
    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))

class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm, self.mlp = nn.LayerNorm(d), Mlp(d, 4 * d)
    def forward(self, x):
        return x + self.mlp(self.norm(x))

class TinyViT(nn.Module):
    def __init__(self, num_classes=10, d=32):
        super().__init__()
        self.num_classes, self.pretrained_cfg = num_classes, {"input_size": (3, 16, 16)}
        self.patch = nn.Conv2d(3, d, 8, 8)
        self.blocks = nn.Sequential(Block(d), Block(d))
        self.head = nn.Linear(d, num_classes)
    def forward(self, x):
        return self.head(self.blocks(self.patch(x).flatten(2).transpose(1, 2)).mean(1))

def create_model(name, pretrained=True, **kwargs):
    assert not pretrained, "lowbit bench model must not ask for pretrained weights (a download)"
    return TinyViT(**kwargs)
'''


def test_bench_model_with_a_stand_in_timm(workspace: Path) -> None:
    """The README's `lowbit bench model --model timm:...`, on a stand-in timm (a tiny model) on the CPU."""
    command = "lowbit bench model --model timm:vit_base_patch16_224 --recipe bf16 fp8-switchback"
    assert command in readme_commands()
    (workspace / ".standin" / "timm").mkdir(parents=True, exist_ok=True)
    (workspace / ".standin" / "timm" / "__init__.py").write_text(STANDIN_TIMM)
    proc = sh(workspace, f'PYTHONPATH="$PWD/.standin:$PYTHONPATH" {command} {RUN[command]}')
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    rows = json.loads((workspace / "runs" / "bench-model" / "model.json").read_text())["rows"]
    assert [(r["recipe"], r["converted"]) for r in rows] == [("bf16", "0/5"), ("fp8-switchback", "5/5")]
    assert all("error" not in r and r["throughput"] > 0 for r in rows), rows
    if importlib.util.find_spec("timm") is not None:
        return
    proc = sh(workspace, command)  # without timm: one line naming it
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "lowbit bench: error: --model timm:vit_base_patch16_224 needs the timm package, which is not installed: "
        "pip install timm"]


def test_resume(workspace: Path) -> None:
    """The README's 2-process `torchrun ... --stop-at 100 --out runs/a` is stood in for by one process."""
    first = sh(workspace, f"lowbit train --steps 4 --stop-at 2 --warmup 1 --batch-size 8 --zeroshot-limit 4 --out runs/a {QUICK}")
    assert first.returncode == 0, first.stderr[-3000:]
    run_readme(workspace, "python -m lowbit train --resume runs/a", RUN["python -m lowbit train --resume runs/a"])
    assert json.loads((workspace / "runs" / "a" / "summary.json").read_text())["step"] == 4
