"""The trainer's step clock: how long each training step took, measured to the end of its GPU work.

On a GPU the host only queues work: ``train_step`` returns after the forward's ``loss.item()`` while the
backward, the gradient clipping and the optimizer are still running. A clock read on the host when
``train_step`` returns leaves them out (issue 27: ``lowbit train`` reported 710 images/s for a ViT-H/14 step
that took 279 ms at batch 96, i.e. 344 images/s). ``StepClock`` records a timing event on the device's stream
instead:

- at a step's start, once its batches are on the host, and after its last queued op (the optimizer,
  the schedule, the ``logit_scale`` clamp): three events, no host sync;
- a step runs from the end of the previous step's GPU work to the end of its own (consecutive steps tile the
  time, so the host's work between steps that the GPU waits for is counted, and nothing is counted twice when
  the host runs ahead of the GPU); after a pause (evaluation, a checkpoint, a replica check: not training
  time, see ``pause``) it starts at its own start event;
- the data wait is the time from a step's start event to its batches-ready event: on the device's clock, the
  time the GPU sat idle waiting for the loader (0 when the GPU was still busy with the previous step);
- ``read`` (called where a log row is written, where the host syncs anyway) waits for the last step's end
  event and returns the finished steps' times.

On the CPU (no ``event`` factory) every op is synchronous and the host's clock is the device's.
``event`` and ``now`` are parameters so that tests can drive the clock with a fake device whose queued work
finishes only when the host waits for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch

__all__ = ["StepClock", "StepTime", "steady_rate", "step_clock"]


class Event(Protocol):
    """What ``StepClock`` needs of a device event (``torch.cuda.Event(enable_timing=True)`` has it)."""

    def record(self) -> None: ...
    def synchronize(self) -> None: ...
    def elapsed_time(self, end: Any) -> float: ...  # milliseconds from this event to ``end``


class StepTime(NamedTuple):
    """One training step: its seconds (to the end of its device work) and the part spent waiting for data."""

    seconds: float
    data_wait: float


class _Marks(NamedTuple):
    start: Any  # the step's start: an event, or the host's clock (seconds) on a synchronous device
    data: Any  # its batches ready
    end: Any  # its work done (device) / returned (host)
    since: Any  # where its time starts: the previous step's end, or ``start`` after a pause


class StepClock:
    """Per-step times, to the end of each step's device work (see the module docstring).

    ``event``: a factory of device timing events (``None``: the device is synchronous, the host clock is read);
    ``now``: the host clock in seconds."""

    def __init__(self, event: Callable[[], Event] | None = None, now: Callable[[], float] = time.perf_counter) -> None:
        self.event, self.now = event, now
        self._pending: list[_Marks] = []
        self._start: Any = None
        self._data: Any = None
        self._last_end: Any = None  # the previous step's end, while steps follow each other without a pause

    def _mark(self) -> Any:
        if self.event is None:
            return self.now()
        e = self.event()
        e.record()
        return e

    def start(self) -> None:
        """A step begins (before its batches are fetched)."""
        self._start = self._data = self._mark()

    def data_ready(self) -> None:
        """The step's batches are on the host: the loader wait ends."""
        self._data = self._mark()

    def stop(self) -> None:
        """The step's last op is queued (after the optimizer, the schedule and the clamp)."""
        end = self._mark()
        since = self._last_end if self._last_end is not None else self._start
        self._pending.append(_Marks(self._start, self._data, end, since))
        self._last_end = end

    def pause(self) -> None:
        """What follows until the next ``start`` is not training time (evaluation, a checkpoint, a check)."""
        self._last_end = None

    def read(self) -> list[StepTime]:
        """The steps stopped since the last ``read``; on a device, waits for the last one's work to finish."""
        pending, self._pending = self._pending, []
        if not pending:
            return []
        if self.event is None:
            return [StepTime(m.end - m.since, m.data - m.start) for m in pending]
        pending[-1].end.synchronize()  # the stream's order: every earlier event is done too
        return [StepTime(m.since.elapsed_time(m.end) / 1e3, m.start.elapsed_time(m.data) / 1e3) for m in pending]


def step_clock(device: torch.device) -> StepClock:
    """The clock for ``device``: CUDA timing events on its current stream, the host clock elsewhere."""
    if device.type == "cuda":
        return StepClock(event=lambda: torch.cuda.Event(enable_timing=True))
    return StepClock()


def steady_rate(step_times: list[float], samples_per_step: int) -> float | None:
    """Samples per second after warm-up: without the first ``min(5, n // 2)`` steps (compilation, autotuning,
    the allocator's first requests)."""
    skip = min(5, len(step_times) // 2)
    rest = step_times[skip:]
    return len(rest) * samples_per_step / sum(rest) if rest and sum(rest) > 0 else None
