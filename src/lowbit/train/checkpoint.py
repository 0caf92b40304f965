"""Checkpoints: plain tensors and Python scalars only (``torch.load(weights_only=True)`` works), written
atomically (temporary file in the same directory, then ``os.replace``), so a crash never leaves a torn file.

Two formats: ``RUN/checkpoint.pt`` (one file: single process and DDP) and ``RUN/checkpoint.dcp/`` (FSDP: a
``torch.distributed.checkpoint`` directory plus ``meta.pt``, see ``lowbit.train.distributed``). A run directory
holds one of them (saving one format removes the other). ``load_checkpoint`` of a DCP checkpoint returns its
``meta.pt`` (everything but the model and optimizer state) with ``format: "dcp"`` and ``path``."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CHECKPOINT_NAME", "DCP_NAME", "get_rng_state", "load_checkpoint", "resolve_checkpoint", "save_checkpoint", "set_rng_state"]

CHECKPOINT_NAME = "checkpoint.pt"
DCP_NAME = "checkpoint.dcp"
_META = "meta.pt"


def _is_dcp(p: Path) -> bool:
    return p.is_dir() and (p / _META).is_file() and (p / ".metadata").is_file()


def get_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and every CUDA device), Python ``random`` and NumPy, as tensors/scalars."""
    version, py_state, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``get_rng_state``."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file or DCP directory; for a run directory its ``checkpoint.pt`` or ``checkpoint.dcp``
    (or ``.checkpoint.dcp.old`` if a crash hit between the two renames of a DCP save); ``ValueError`` if none."""
    p = Path(path)
    if _is_dcp(p) or p.is_file():
        return p
    if p.is_dir():
        for cand in (p / DCP_NAME, p / CHECKPOINT_NAME, p / f".{DCP_NAME}.old"):
            if _is_dcp(cand) or cand.is_file():
                return cand
        p = p / CHECKPOINT_NAME
    raise ValueError(f"cannot resume: no checkpoint at {str(p)!r}")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no pickled code is ever executed).

    A DCP checkpoint gives its metadata only, with ``format: "dcp"`` and ``path`` (the model and optimizer
    are loaded into a live model by ``lowbit.train.distributed.load_dcp``)."""
    p = resolve_checkpoint(path)
    if p.is_dir():
        meta = torch.load(p / _META, map_location=map_location, weights_only=True)
        return {**meta, "format": "dcp", "path": str(p)}
    return torch.load(p, map_location=map_location, weights_only=True)
