"""DDP's invariant, checked where CUDA graphs could break it: ``replicas_agree`` on 2 gloo processes (identical
parameters agree; one float32 ulp changed on one rank does not, on both ranks), and the trainer's error."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist


def _worker(rank: int, world: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from lowbit.train.distributed import replicas_agree

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64))
        same = replicas_agree(model)
        if rank == 1:  # the smallest change a float32 weight can take
            with torch.no_grad():
                w = model[2].weight
                w[7, 3] = torch.nextafter(w[7, 3], torch.tensor(float("inf")))
        results[rank] = (same, replicas_agree(model))
    finally:
        dist.destroy_process_group()


def test_replicas_agree_detects_one_ulp(gloo_spawn) -> None:
    res = gloo_spawn(_worker)
    assert res == {0: (True, False), 1: (True, False)}


def test_single_process_agrees() -> None:
    from lowbit.train.distributed import replicas_agree

    assert replicas_agree(torch.nn.Linear(4, 4))


def test_check_replicas_error_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from lowbit.train import trainer as loop

    tr = loop.Trainer(model=torch.nn.Linear(2, 2), raw_model=torch.nn.Linear(2, 2), optimizer=None,  # type: ignore[arg-type]
                      env=None, graphs=True)  # type: ignore[arg-type]
    loop.check_replicas(tr, 3)  # one process: nothing to compare
    monkeypatch.setattr(loop, "replicas_agree", lambda model: False)
    with pytest.raises(loop.ReplicaDivergenceError, match="differ after step 3 under CUDA graphs: rerun with "
                                                          "--compile-mode default"):
        loop.check_replicas(tr, 3)
