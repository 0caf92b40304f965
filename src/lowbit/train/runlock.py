"""One run per folder: an exclusive lock on the run directory, held for the whole run, and the clean-up of
temporary files that interrupted saves left behind.

``RUN/.lowbit.lock`` is locked with ``fcntl.flock`` (exclusive, non-blocking) before anything in ``RUN`` is
written, and records who holds it (PID, host, start time). The kernel drops the lock when its process dies,
however it dies, so a second ``lowbit train`` with the same ``--out`` (or a ``--resume`` of a live run) is
refused while the first is alive, and a lock file left by a killed run is taken over (with a line saying so).
A clean exit removes the lock file. On file systems without ``flock`` the recorded PID decides (same host:
is it alive?). Under ``torchrun`` only rank 0 takes it. A forked child (a DataLoader worker) closes its copy of
the lock's descriptor at once, so the lock dies with the training process, not with its last worker.

Temporary files. Every lowbit write goes to a temporary file beside its target, then ``os.replace`` (a kill
leaves the old file or the new one). A kill between the two leaves the temporary file: ``remove_stale_temps``
deletes exactly lowbit's own patterns (``.checkpoint.pt.*.tmp``, ``.checkpoint.dcp.tmp/``, ``.metrics.csv.*.tmp``,
...) in the run folder, and only while holding its lock (no live run can be writing them).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fnmatch
import json
import os
import shutil
import socket
from pathlib import Path

__all__ = ["LOCK_NAME", "TEMP_PATTERNS", "RunLock", "RunLockedError", "remove_stale_temps"]

LOCK_NAME = ".lowbit.lock"
# the temporary names lowbit writes directly in a run folder: save_checkpoint's, save_dcp's directory (meta.pt's
# temporary lives inside it) and lowbit.atomic_io's for the logs
TEMP_PATTERNS = (
    ".checkpoint.pt.*.tmp", ".checkpoint.dcp.tmp", ".metrics.csv.*.tmp", ".eval.csv.*.tmp", ".summary.json.*.tmp",
    ".config.yaml.*.tmp",
)


class RunLockedError(ValueError):
    """The run folder is in use by a live ``lowbit train``."""


_HELD: list[RunLock] = []  # locks this process holds (a forked child drops its copies)


def _after_fork_in_child() -> None:
    for lock in _HELD:
        if lock.fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock.fd)
            lock.fd = None
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _holder(path: Path) -> dict[str, object]:
    try:
        return dict(json.loads(path.read_text() or "{}"))
    except (OSError, ValueError, TypeError):
        return {}


def _describe(holder: dict[str, object]) -> str:
    if not holder:
        return "a process that left no record"
    since = f", since {holder['started']}" if holder.get("started") else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{since}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``RunLock(out).acquire()``: hold ``out/.lowbit.lock`` until ``release()`` (or process death).

    ``acquire`` creates ``out`` if needed; ``release`` removes the lock file and, if ``acquire`` created ``out``
    and nothing else was written there (the run was refused), the folder too: no orphan run folder."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.fd: int | None = None
        self.created: list[Path] = []
        self.took_over: dict[str, object] | None = None  # the record of a dead run's lock that we took over

    def acquire(self) -> RunLock:
        """Take the lock or raise ``RunLockedError`` (one line naming the holder). An unusable folder raises
        ``OSError`` naming it."""
        import fcntl

        missing = []
        p = self.out
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            what = e.strerror or str(e)
            if isinstance(e, FileExistsError | NotADirectoryError):
                what = "a file is in the way (not a directory)"
            raise OSError(e.errno, f"cannot use run directory {str(self.out)!r}: {what}") from e
        self.created = missing  # deepest first
        while True:
            existed = self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._refuse(_holder(self.path))
            except OSError as e:  # no flock on this file system (some network mounts): trust the record
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                holder = _holder(self.path)
                if holder.get("host") == socket.gethostname() and _pid_alive(int(str(holder.get("pid", "0")) or 0)):
                    os.close(fd)
                    self._refuse(holder)
            # the file we locked must still be the one at the path (a run that just ended unlinks it)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _holder(self.path) if existed else {}
        if existed and old.get("pid") != os.getpid():
            self.took_over = old
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self.fd = fd
        _HELD.append(self)
        return self

    def _refuse(self, holder: dict[str, object]) -> None:
        self._remove_created()
        pid = int(str(holder.get("pid", "0")) or 0)
        if holder.get("host") == socket.gethostname() and pid and not _pid_alive(pid):
            raise RunLockedError(
                f"run folder {str(self.out)!r} is still locked by processes of a run that ended ({_describe(holder)}, "
                "now gone): wait a few seconds for them to exit and start again")
        raise RunLockedError(
            f"run folder {str(self.out)!r} is in use by a running lowbit train ({_describe(holder)}): wait for it to "
            "end (or stop it), or pass another --out")

    def stale_message(self) -> str:
        """The line to print when the lock of a run that did not end cleanly was taken over ('' if none)."""
        if self.took_over is None:
            return ""
        return (f"lowbit train: took over the lock of a run that ended without releasing it ({_describe(self.took_over)}; "
                "killed?)")

    def release(self) -> None:
        """Unlock and remove the lock file; remove the folders ``acquire`` created if they hold nothing else."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)  # closing drops the flock
        self.fd = None
        if self in _HELD:
            _HELD.remove(self)
        self._remove_created()

    def _remove_created(self) -> None:
        for d in self.created:
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty
        self.created = []

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_stale_temps(out: str | Path) -> tuple[int, int]:
    """Delete lowbit's temporary files (``TEMP_PATTERNS``) directly in ``out``; returns (count, bytes). Call only
    while holding the run's lock."""
    out = Path(out)
    if not out.is_dir():
        return 0, 0
    count = size = 0
    for entry in os.scandir(out):
        if not any(fnmatch.fnmatchcase(entry.name, pat) for pat in TEMP_PATTERNS):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                size += sum(f.stat().st_size for f in Path(entry.path).rglob("*") if f.is_file())
                shutil.rmtree(entry.path)
            else:
                size += entry.stat(follow_symlinks=False).st_size
                os.unlink(entry.path)
            count += 1
        except OSError:
            continue
    return count, size


def claim_run_dir(out: str | Path) -> RunLock:
    """Lock ``out`` (rank 0, before anything is written there) and clear temporaries of interrupted saves,
    printing one line for a taken-over stale lock and one for the removed files."""
    lock = RunLock(out).acquire()
    note = lock.stale_message()
    if note:
        print(note, flush=True)
    n, size = remove_stale_temps(out)
    if n:
        print(f"lowbit train: removed {n} temporary file(s) of interrupted saves from {out} ({size / 1e6:.1f} MB)",
              flush=True)
    return lock
