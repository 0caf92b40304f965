"""The run's processes, device and precision (``Env``, ``setup_env``) and what the summary records about the
machine (versions, device name). A leaf of ``lowbit.train``: ``compiling``, the trainer and the books read it."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import math
import os
import platform
from dataclasses import dataclass

import torch
import torch.distributed as dist

import lowbit
from lowbit.train.config import TrainConfig

__all__ = ["Env", "cpu_threads", "device_name", "setup_env", "versions"]


def versions() -> dict[str, str]:
    out = {"lowbit": str(lowbit.__version__), "torch": str(torch.__version__), "python": platform.python_version()}
    try:
        out["triton"] = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        out["triton"] = "not installed"
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def cpu_threads(requested: int = 0) -> int:
    """Threads for CPU training: ``requested``, or (0) the cores that are free, less one, at least 1.

    PyTorch's intra-op threads meet at a barrier after every op, so one thread whose core is taken by another
    process stalls them all: measured here, a tiny CLIP step took 7x longer on 2 threads than on 1 while
    other work shared the 2 cores. Auto mode therefore leaves a core spare and avoids busy ones (1-minute
    load average); on a 2-core machine it uses 1 thread. The count is fixed for the run (results depend on it).
    """
    if requested:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(torch.get_num_threads(), math.floor(cores - load + 0.5) - 1))


@dataclass
class Env:
    """Processes, device and precision of this run."""

    world_size: int
    rank: int
    parallel: str | None  # None (one process), "ddp" or "fsdp"
    device: torch.device
    precision: str  # "bf16" (autocast) or "fp32"
    device_name: str = ""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")


def setup_env(cfg: TrainConfig) -> Env:
    """Device checks, the process group (under torchrun), TF32 on CUDA, CPU threads."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world_size > 1
    device_str = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device_str)
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if distributed else 0
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and max(local_rank, device.index or 0) >= gpus:
        who = f"process LOCAL_RANK={local_rank} needs its own GPU" if distributed else f"{device_str} asked for"
        raise ValueError(f"device: {who}, but this machine has {gpus} CUDA device(s); "
                         + ("start fewer processes per node (torchrun --nproc_per_node) or " if distributed else "")
                         + "train on the CPU (--device cpu)")
    if distributed:  # the backend follows the device, so `--device cpu` on a GPU machine runs on gloo
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=dt.timedelta(seconds=cfg.dist_timeout))
    rank = dist.get_rank() if distributed else 0
    if device.type == "cuda":
        if distributed:
            device = torch.device("cuda", local_rank)
        elif device.index is None:  # set_device needs an index; "cuda" means the current device
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg.threads))
    env = Env(world_size, rank, cfg.parallel if distributed else None, device, precision)
    env.device_name = device_name(device)
    return env
