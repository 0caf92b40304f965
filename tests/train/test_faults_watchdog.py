"""A frozen rank (SIGSTOP) is named within --dist-timeout (issue 32): two gloo processes, a 3-second group
timeout; rank 1 stops itself, rank 0's all_reduce times out and the watchdog's one line names rank 1."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time

import torch
import torch.distributed as dist


def _worker(rank: int, world: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=dt.timedelta(seconds=3))
    from lowbit.train.watchdog import CollectiveTimeoutError, collective_watchdog

    if rank == 1:
        with collective_watchdog(rank, world, 3.0):
            dist.barrier()  # both alive, heartbeats running
            time.sleep(1.0)
            results["pid1"] = os.getpid()
            os.kill(os.getpid(), signal.SIGSTOP)  # frozen until rank 0 lets it go
        results[1] = "continued"
        return
    t0 = time.monotonic()
    try:
        with collective_watchdog(rank, world, 3.0):
            dist.barrier()
            while "pid1" not in results:
                time.sleep(0.05)
            t0 = time.monotonic()
            dist.all_reduce(torch.ones(3))
    except CollectiveTimeoutError as e:
        results[0] = (str(e), time.monotonic() - t0)
    finally:
        os.kill(results["pid1"], signal.SIGCONT)


def test_a_frozen_rank_is_named_when_a_collective_times_out(gloo_spawn) -> None:
    res = gloo_spawn(_worker)
    message, waited = res[0]
    assert res[1] == "continued"
    assert waited < 30, waited  # the group's timeout, not torch's 30 minutes
    assert len(message.splitlines()) == 1, message
    assert "timed out after 3 s on rank 0 (--dist-timeout): rank 1 (silent for" in message, message
    assert "frozen or dead" in message
