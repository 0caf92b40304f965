"""Checkpoints: plain tensors and Python scalars only (``torch.load(weights_only=True)`` works), written
atomically (temporary file in the same directory, then ``os.replace``), so a crash never leaves a torn file.

Two formats: ``RUN/checkpoint.pt`` (one file: single process and DDP) and ``RUN/checkpoint.dcp/`` (FSDP: a
``torch.distributed.checkpoint`` directory plus ``meta.pt``, see ``lowbit.train.distributed``). A run directory
holds one of them (saving one format removes the other). ``load_checkpoint`` of a DCP checkpoint returns its
``meta.pt`` (everything but the model and optimizer state) with ``format: "dcp"`` and ``path``.

DCP integrity: ``meta.pt`` records the SHA-256 of every file of the directory (``files``), verified on load;
a damaged ``checkpoint.dcp`` of a run directory falls back to ``checkpoint.prev.dcp`` as the single file does.

Integrity. Every file carries ``checksum``: the SHA-256 of its content (every tensor's dtype, shape and bytes,
every scalar, in a fixed order), verified by ``load_checkpoint``; an empty, truncated, unreadable or altered
file raises ``CheckpointError`` naming the file and what is wrong with it. Saving over a checkpoint keeps the
old one as ``checkpoint.prev.pt``, and a run directory whose ``checkpoint.pt`` is damaged resumes from it (with
a warning). A full disk is reported as such (``OSError(ENOSPC)``), the previous checkpoint left in place."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowbit.atomic_io import atomic_open, no_space

__all__ = [
    "CHECKPOINT_NAME", "DCP_NAME", "PREV_DCP_NAME", "PREV_NAME", "CheckpointError", "dcp_file_checksums",
    "get_rng_state", "load_checkpoint",
    "resolve_checkpoint", "save_checkpoint", "set_rng_state", "state_checksum",
]  # fmt: skip

CHECKPOINT_NAME = "checkpoint.pt"
PREV_NAME = "checkpoint.prev.pt"  # the checkpoint before the last save (a fallback if the last is damaged)
DCP_NAME = "checkpoint.dcp"
PREV_DCP_NAME = "checkpoint.prev.dcp"  # the DCP checkpoint before the last save
_META = "meta.pt"
_CHECKSUM = "checksum"
_SCHEME = "lowbit-state-sha256/1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: empty, truncated, unreadable or altered since it was written."""


def _is_dcp(p: Path) -> bool:
    """A DCP checkpoint directory (complete or not: a damaged one is reported, not passed over)."""
    return p.is_dir() and ((p / _META).is_file() or (p / ".metadata").is_file())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dcp_file_checksums(directory: str | Path) -> dict[str, str]:
    """SHA-256 of every file DCP wrote in ``directory`` (relative name -> hex), ``meta.pt`` aside."""
    d = Path(directory)
    return {str(f.relative_to(d)): _sha256(f) for f in sorted(d.rglob("*")) if f.is_file() and f.name != _META}


_VERIFIED: set[tuple[str, int]] = set()


def _verify_dcp(p: Path, meta: dict[str, Any]) -> None:
    """Every file ``meta`` lists must be there with its SHA-256 (once per process and directory state)."""
    files = meta.get("files")
    if not isinstance(files, dict):
        if not (p / ".metadata").is_file():
            raise CheckpointError(f"checkpoint {str(p)!r} is incomplete: its .metadata is missing")
        return  # written before checksums were recorded
    key = (str(p.resolve()), hash(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.rglob("*")))))
    if key in _VERIFIED:
        return
    for name, digest in sorted(files.items()):
        f = p / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {str(p)!r} is incomplete: {name} is missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"checkpoint {str(p)!r} is corrupt: {name} does not match the SHA-256 stored when "
                                  "it was written (bytes changed on disk)")
    _VERIFIED.add(key)


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


def _feed(h: Any, obj: Any) -> None:
    """Hash ``obj`` (nested dicts/lists of tensors and scalars) in a fixed order."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            flat = t.to("cpu").contiguous().reshape(-1)
            h.update(flat.view(torch.uint8).numpy().data if flat.element_size() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            h.update(f"K{k!r}".encode())
            _feed(h, obj[k])
    elif isinstance(obj, list | tuple):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"S{type(obj).__name__}:{obj!r}".encode())


def state_checksum(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's content, without its ``checksum`` entry."""
    h = hashlib.sha256(_SCHEME.encode())
    _feed(h, {k: v for k, v in state.items() if k != _CHECKSUM})
    return h.hexdigest()


def _disk_full(exc: BaseException, directory: Path) -> bool:
    if no_space(exc):
        return True
    # torch.save reports a failed write as "[enforce fail at inline_container.cc:...] unexpected pos ..."
    if isinstance(exc, RuntimeError) and ("unexpected pos" in str(exc) or "file write failed" in str(exc)):
        try:
            return shutil.disk_usage(directory).free < 64 << 20
        except OSError:
            return False
    return False


def save_checkpoint(path: str | Path, state: dict[str, Any], keep_previous: bool = True) -> Path:
    """Write ``state`` (plus its ``checksum``) to ``path`` atomically (``lowbit.atomic_io.atomic_open``); returns
    the path.

    ``keep_previous``: an existing file at ``path`` becomes ``checkpoint.prev.pt`` beside it (replacing the one
    before), once the new one is written and fsynced. A full disk raises ``OSError(ENOSPC)`` naming the file; the
    old checkpoint stays in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {**state, _CHECKSUM: {"scheme": _SCHEME, "sha256": state_checksum(state)}}

    def keep(p: Path) -> None:  # a crash between this rename and the next leaves the previous one to resume from
        if p.is_file():
            os.replace(p, p.with_name(PREV_NAME))

    with atomic_open(path, "wb", before_replace=keep if keep_previous else None, what="checkpoint",
                     disk_full=lambda exc: _disk_full(exc, path.parent)) as f:
        torch.save(state, f)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file or DCP directory; for a run directory its ``checkpoint.pt`` or ``checkpoint.dcp``
    (or ``.checkpoint.dcp.old`` if a crash hit between the two renames of a DCP save, or ``checkpoint.prev.pt``
    if one hit between the two renames of a save); ``ValueError`` if none."""
    p = Path(path)
    if _is_dcp(p) or p.is_file():
        return p
    if p.is_dir():
        for cand in (p / DCP_NAME, p / CHECKPOINT_NAME, p / PREV_DCP_NAME, p / f".{DCP_NAME}.old", p / PREV_NAME):
            if _is_dcp(cand) or cand.is_file():
                return cand
        if any((p / n).exists() for n in ("config.yaml", "metrics.csv", "summary.json")):  # stopped before a save
            raise ValueError(f"cannot resume: the run in {str(p)!r} has no checkpoint (it stopped before the first "
                             f"save); start it over, same options: `lowbit train --config {p / 'config.yaml'} --overwrite`")
        p = p / CHECKPOINT_NAME
    raise ValueError(f"cannot resume: no checkpoint at {str(p)!r}")


def _load_file(p: Path, map_location: str | torch.device) -> dict[str, Any]:
    """``torch.load(p, weights_only=True)``, verified against its checksum; ``CheckpointError`` if damaged."""
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"checkpoint {str(p)!r} cannot be read: {exc.strerror or exc}") from exc
    if size == 0:
        raise CheckpointError(f"checkpoint {str(p)!r} is empty (0 bytes): it was never completely written")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except PermissionError as exc:
        raise CheckpointError(f"checkpoint {str(p)!r} cannot be read: {exc.strerror or exc}") from exc
    except Exception as exc:  # zip / unpickling errors of every kind: the file is not a whole checkpoint
        raise CheckpointError(  # PyTorch's own text is the chained cause: --debug shows it whole
            f"checkpoint {str(p)!r} ({size:,} bytes) is truncated or corrupt: torch.load cannot read it "
            f"({type(exc).__name__}; --debug shows PyTorch's message)"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(p)!r} does not hold a lowbit checkpoint (a {type(state).__name__})")
    stored = state.pop(_CHECKSUM, None)
    if isinstance(stored, dict) and stored.get("scheme") == _SCHEME and state_checksum(state) != stored.get("sha256"):
        raise CheckpointError(
            f"checkpoint {str(p)!r} is corrupt: its content does not match the SHA-256 stored when it was "
            "written (bytes changed on disk)"
        )
    return state


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", fallback: bool = True) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no pickled code is ever executed), verifying its checksum.

    A DCP checkpoint gives its metadata only, with ``format: "dcp"`` and ``path`` (the model and optimizer
    are loaded into a live model by ``lowbit.train.distributed.load_dcp``). ``fallback``: if ``path`` is a run
    directory whose ``checkpoint.pt`` is damaged, load ``checkpoint.prev.pt`` instead (with a warning); the
    result's ``path`` says which file was loaded."""
    p = resolve_checkpoint(path)
    try:
        return _load_any(p, map_location)
    except CheckpointError as exc:
        prev = p.with_name(PREV_DCP_NAME if p.is_dir() else PREV_NAME)
        if not (fallback and Path(path).is_dir() and p != Path(path) and p.name in (CHECKPOINT_NAME, DCP_NAME) and prev.exists()):
            raise
        try:
            state = _load_any(prev, map_location)
        except CheckpointError as exc2:
            raise CheckpointError(f"{exc}; the previous one is damaged too: {exc2}") from exc
        key = (str(p.resolve()), p.stat().st_mtime_ns)
        if key not in _WARNED:  # resolve_config and the trainer both load it: say it once
            _WARNED.add(key)
            warnings.warn(f"{exc}; resuming from the previous checkpoint {str(prev)!r} (step {state.get('step')})",
                          stacklevel=2)
        return {**state, "path": str(prev)}


def _load_any(p: Path, map_location: str | torch.device) -> dict[str, Any]:
    """A checkpoint file, or a DCP directory's verified ``meta.pt`` (with ``format: "dcp"``), with ``path``."""
    if p.is_dir():
        if not (p / _META).is_file():
            raise CheckpointError(f"checkpoint {str(p)!r} is incomplete: its {_META} is missing")
        meta = _load_file(p / _META, map_location)
        _verify_dcp(p, meta)
        return {**meta, "format": "dcp", "path": str(p)}
    return {**_load_file(p, map_location), "path": str(p)}


_WARNED: set[tuple[str, int]] = set()
