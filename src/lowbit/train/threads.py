"""Exact resume and CPU threads: a float32 CPU run's numbers depend on its intra-op thread count (reductions are
split per thread), and ``--threads 0`` (auto) picks the count from the machine's load at start. A checkpoint
therefore records the count its run used (``threads``), and a resume keeps it unless told otherwise."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["recorded_threads", "threads_for_resume"]


def recorded_threads(device: torch.device) -> dict[str, int]:
    """The checkpoint entry: ``{"threads": n}`` for a CPU run, nothing on a GPU (where it does not change the numbers)."""
    return {"threads": torch.get_num_threads()} if device.type == "cpu" else {}


def threads_for_resume(requested: int, ckpt: dict[str, Any], on_cpu: bool) -> tuple[int, str]:
    """The thread count for resuming from ``ckpt`` and a line to print ('' if none).

    Auto (0) takes the recorded count (auto would pick by today's load); another explicit count is kept, with a
    warning that the run will not match an uninterrupted one bit for bit."""
    recorded = ckpt.get("threads")
    if not on_cpu or not isinstance(recorded, int) or recorded < 1:
        return requested, ""
    if requested in (0, recorded):
        note = (f"lowbit train: resuming with the checkpoint's {recorded} CPU thread(s) (automatic would choose by "
                "load; the numbers depend on the count)") if requested == 0 else ""
        return recorded, note
    return requested, (f"lowbit train: warning: --threads {requested}, but the checkpoint's run used {recorded}: the "
                       "resumed run will not match an uninterrupted one bit for bit (pass --threads "
                       f"{recorded} for that)")
