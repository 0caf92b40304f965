"""A frozen or dead rank, named: heartbeats through the rendezvous store, and one line when a collective times out.

Without this, a rank stopped by ``SIGSTOP`` (or a dead host) left the others waiting in a collective for torch's
default process-group timeout (30 minutes), silently. The trainer sets the group's timeout to ``--dist-timeout``
(default 300 s) and runs the loop inside ``collective_watchdog``: a daemon thread on every rank writes a heartbeat
(``lowbit/alive/<rank>`` = wall time) into the rendezvous TCP store every few seconds; when a collective raises its
timeout, the watchdog reads every rank's heartbeat and raises ``CollectiveTimeoutError``, one line naming the
operation, the timeout and the silent rank(s) (whose heartbeat stopped: a frozen process stops all its threads).
With NCCL, torch's own watchdog may abort the process first; its log then carries the timeout.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["CollectiveTimeoutError", "collective_watchdog", "is_timeout"]


class CollectiveTimeoutError(RuntimeError):
    """A collective operation timed out: a rank is frozen or dead."""


_TIMEOUT = re.compile(r"timed? ?out|timeout", re.IGNORECASE)


def is_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is a process-group timeout (gloo: "Timed out waiting ...ms for recv operation"; NCCL:
    "Watchdog caught collective operation timeout")."""
    return isinstance(exc, RuntimeError) and bool(_TIMEOUT.search(str(exc)))


def _store(timeout_s: float) -> Any:
    """A client of the rendezvous store (``MASTER_ADDR``/``MASTER_PORT``), or None."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port:
        return None
    try:
        from torch.distributed import TCPStore

        return TCPStore(host, int(port), is_master=False, timeout=dt.timedelta(seconds=timeout_s),
                        wait_for_workers=False)
    except Exception:  # no store to talk to: the error line then says less
        return None


class _Heartbeat(threading.Thread):
    def __init__(self, rank: int, interval: float) -> None:
        super().__init__(name=f"lowbit-heartbeat-{rank}", daemon=True)
        self.rank, self.interval = rank, interval
        self.stop = threading.Event()

    def run(self) -> None:
        store = _store(max(5.0, 2 * self.interval))
        if store is None:
            return
        while not self.stop.is_set():
            with contextlib.suppress(Exception):
                store.set(f"lowbit/alive/{self.rank}", repr(time.time()))
            self.stop.wait(self.interval)


def silent_ranks(world_size: int, stale_after: float) -> tuple[list[tuple[int, float | None]], str]:
    """Ranks whose heartbeat is older than ``stale_after`` seconds (rank, age or None if never seen), and '' or
    why the heartbeats could not be read."""
    store = _store(5.0)
    if store is None:
        return [], "no rendezvous store to read heartbeats from"
    now, out = time.time(), []
    try:
        for r in range(world_size):
            key = f"lowbit/alive/{r}"
            if not store.check([key]):
                out.append((r, None))
                continue
            age = now - float(store.get(key).decode())
            if age > stale_after:
                out.append((r, age))
    except Exception as e:
        return [], f"the rendezvous store did not answer ({type(e).__name__}; its host may be the frozen one)"
    return out, ""


def describe_timeout(exc: BaseException, rank: int, world_size: int, timeout_s: float, interval: float) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    op = re.search(r"for (\w+) operation", first)
    what = f"a collective ({op.group(1)})" if op else "a collective operation"
    silent, why = silent_ranks(world_size, stale_after=max(3 * interval, 2.0))
    silent = [(r, age) for r, age in silent if r != rank]  # this rank is alive (its own beat may lag under load)
    if silent:
        who = ", ".join(f"rank {r} (" + ("no heartbeat at all" if age is None else f"silent for {age:.0f} s") + ")"
                        for r, age in silent)
        cause = f"{who} {'is' if len(silent) == 1 else 'are'} frozen or dead"
    else:
        cause = "a rank is frozen or dead" + (f" ({why})" if why else " (every heartbeat is recent: stuck, not stopped)")
    return (f"{what} timed out after {timeout_s:g} s on rank {rank} (--dist-timeout): {cause}; the last checkpoint "
            "(if any) is kept: resume from it once the ranks are healthy")


@contextlib.contextmanager
def collective_watchdog(rank: int, world_size: int, timeout_s: float) -> Iterator[None]:
    """Heartbeats while the block runs; a collective timeout inside it becomes ``CollectiveTimeoutError`` (one line)."""
    interval = min(5.0, max(0.2, timeout_s / 6))
    beat = _Heartbeat(rank, interval)
    beat.start()
    try:
        yield
    except RuntimeError as exc:
        if isinstance(exc, CollectiveTimeoutError) or not is_timeout(exc):
            raise
        raise CollectiveTimeoutError(describe_timeout(exc, rank, world_size, timeout_s, interval)) from exc
    finally:
        beat.stop.set()
