"""Atomic file writes: a temporary file in the target's folder, flushed and fsynced, then ``os.replace``.

A process killed at any moment (``kill -9``, a full disk, a power cut after the fsync) leaves either the old
file or the new one, never an empty or half-written one. The temporary name is ``.<name>.<random>.tmp``: hidden,
beside the target (the same file system, so the rename is atomic), and recognisable, so that a run that finds
one left by a killed process can remove it (``lowbit.train.runlock.remove_stale_temps``). A leaf module: it
imports nothing from lowbit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_write_text", "fsync_dir", "no_space"]


def no_space(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk (or quota)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, before_replace: Callable[[Path], None] | None = None,
                what: str = "", disk_full: Callable[[BaseException], bool] = no_space,
                **kwargs: Any) -> Iterator[IO[Any]]:
    """``with atomic_open(path) as f: f.write(...)``: ``f`` is a temporary file that replaces ``path`` when the
    block ends without an exception (else it is removed and ``path`` is untouched). A full disk raises
    ``OSError(ENOSPC)`` naming ``path``.

    ``before_replace(path)`` runs once the temporary file is complete and fsynced, just before it replaces
    ``path`` (``save_checkpoint`` moves the old checkpoint aside there); if it raises, the temporary file is removed
    as for any failure. ``what`` names the file in the full-disk message ("checkpoint": "could not write checkpoint
    '...' (the previous checkpoint, if any, is kept)"); ``disk_full(exc)`` says which failures are a full disk
    (``no_space``: ENOSPC / EDQUOT; a writer whose own errors hide it passes more). ``kwargs`` go to ``open``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):  # keep the old file's permissions (mkstemp makes 0600)
            os.chmod(tmp, os.stat(path).st_mode & 0o7777 if path.exists() else 0o644)
        if before_replace is not None:
            before_replace(path)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if disk_full(exc):
            raise OSError(errno.ENOSPC, f"no space left on the device: could not write {what + ' ' if what else ''}"
                          f"{str(path)!r} (the previous {what or 'version'}, if any, is kept)") from exc
        raise


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Replace ``path``'s content with ``text`` atomically."""
    with atomic_open(path, "w", encoding=encoding, newline="") as f:
        f.write(text)


def fsync_dir(path: str | Path) -> None:
    """Make a rename in ``path`` durable (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
