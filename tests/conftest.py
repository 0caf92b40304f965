"""Test set-up: on a machine without CUDA, Triton kernels run in the interpreter (TRITON_INTERPRET=1).

The variable must be set before Triton is imported, so it is set here, first.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Inductor's on-disk cache does not key its CPU code on ATEN_CPU_CAPABILITY: a run with another capability
# reused kernels compiled for the first one (a C++ compile error under `default`, a segfault under `avx2`).
# One cache per capability keeps `ATEN_CPU_CAPABILITY=... python -m pytest` meaningful.
if os.environ.get("ATEN_CPU_CAPABILITY") and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    import getpass
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_{os.environ['ATEN_CPU_CAPABILITY']}"
    )

import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=100, deadline=None)
# On the GPU host every new shape compiles/tunes kernels: fewer examples keep a run inside minutes.
settings.register_profile("gpu", max_examples=6, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_gloo(worker, world: int = 2) -> dict:
    """Run ``worker(rank, world, port, results)`` in ``world`` processes (each sets up its gloo group on
    ``port``); returns the ``results`` each rank stored, by rank."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(world, _free_port(), results), nprocs=world, join=True)
        return dict(results)


@pytest.fixture(scope="session")
def gloo_spawn():
    """``gloo_spawn(worker, world=2) -> {rank: result}``: a worker function in several gloo processes; skips where
    torch.distributed has no gloo."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    return _spawn_gloo
