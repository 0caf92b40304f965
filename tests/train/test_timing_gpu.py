"""On the GPU: ``lowbit train``'s steady images/s agree with CUDA events around the same steps (issue 27).

The references are independent of the trainer's clock: a CUDA event recorded when the last warm-up step's work is
queued and one when the last step's is, read once at the end; and the wall clock between two synchronised points
at the same places. Small on purpose (ViT-B/32, batch 64, 20 steps, synthetic data): eager and ``compile: auto``
(block-wise CUDA graphs). Before the fix the trainer's clock stopped when the step's ops were queued: its images/s
came out well above both references.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from lowbit.train import TrainConfig, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the GPU host)")]

STEPS, BATCH, WARM = 20, 64, 5  # summary's steady rate leaves out the first min(5, n // 2) steps


@pytest.mark.parametrize("compile_", ["false", "auto"])
def test_steady_images_per_s_match_cuda_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compile_: str) -> None:
    import lowbit.train.loop as loop

    real_step = loop.train_step
    marks: dict[int, tuple[torch.cuda.Event, float]] = {}

    def timed(tr: Any, micro: Any, step: int, logging: bool = True) -> Any:
        out = real_step(tr, micro, step, logging)
        if step in (WARM, STEPS):  # after the step's work is queued: the steady steps lie between the two
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            torch.cuda.synchronize()  # the wall clock's reference (one sync each, outside the steady steps' work)
            marks[step] = (event, time.perf_counter())
        return out

    monkeypatch.setattr(loop, "train_step", timed)
    cfg = TrainConfig.from_dict({
        "preset": "vit-b-32", "recipe": "bf16", "data": "synthetic", "zeroshot": "none", "batch_size": BATCH,
        "steps": STEPS, "warmup": 2, "save_every": -1, "log_every": 5, "progress": False,
        "compile": {"false": False, "auto": "auto"}[compile_], "out": str(tmp_path / "run"),
    })
    summary = train(cfg)
    (start, t0), (end, t1) = marks[WARM], marks[STEPS]
    events = (STEPS - WARM) * BATCH / (start.elapsed_time(end) / 1e3)
    wall = (STEPS - WARM) * BATCH / (t1 - t0)
    steady = summary["samples_per_s_steady"]
    print(f"compile {compile_}: trainer {steady:.1f} images/s, CUDA events {events:.1f}, wall clock {wall:.1f}; "
          f"MFU {summary['mfu_steady']}, data wait {summary['data_wait_frac']}")
    assert steady == pytest.approx(events, rel=0.03)
    assert steady == pytest.approx(wall, rel=0.03)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["samples_per_s_steady"] == steady
