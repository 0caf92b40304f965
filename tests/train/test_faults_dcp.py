"""FSDP (DCP) checkpoints as safe as single-file ones (issue 32): every file checksummed and verified on load, the
previous checkpoint kept, a damaged current one falling back to it with a warning, DCP's own errors one line.
Two gloo processes (``gloo_spawn``), a two-layer model sharded with FSDP2 on the CPU."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _worker(rank: int, world: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    out: dict[str, object] = {}
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        from lowbit.train.checkpoint import CheckpointError, load_checkpoint
        from lowbit.train.distributed import load_dcp, save_dcp

        run = Path(os.environ["LOWBIT_TEST_RUN"])

        def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 8))
            mesh = init_device_mesh("cpu", (world,))
            for layer in model:
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            return model, torch.optim.AdamW(model.parameters(), lr=0.1)

        model, opt = build()
        for step in (1, 2):
            model(torch.randn(4, 16)).square().mean().backward()
            opt.step()
            save_dcp(run / "checkpoint.dcp", model, opt, {"step": step})
        dist.barrier()
        out["current"] = load_checkpoint(run / "checkpoint.dcp")["step"]
        out["previous"] = load_checkpoint(run / "checkpoint.prev.dcp")["step"]
        out["files"] = sorted(load_checkpoint(run)["files"])
        dist.barrier()
        if rank == 0:
            _flip(next((run / "checkpoint.dcp").glob("*.distcp")))
        dist.barrier()
        try:
            load_checkpoint(run / "checkpoint.dcp")
        except CheckpointError as e:
            out["flipped"] = str(e)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out["fallback"] = load_checkpoint(run)["step"]
        out["warning"] = " ".join(str(w.message) for w in caught)
        dist.barrier()
        if rank == 0:  # heavier damage, past the checksums (as a checkpoint written before them would meet it)
            for f in (run / "checkpoint.prev.dcp").glob("*.distcp"):
                f.write_bytes(f.read_bytes()[:40])
        dist.barrier()
        model2, opt2 = build()
        try:
            load_dcp(run / "checkpoint.prev.dcp", model2, opt2)
        except CheckpointError as e:
            out["dcp_error"] = str(e)
    finally:
        results[rank] = out
        dist.destroy_process_group()


def test_dcp_checkpoints_are_verified_kept_twice_and_errors_are_one_line(
    gloo_spawn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOWBIT_TEST_RUN", str(tmp_path))
    res = gloo_spawn(_worker)
    for rank in (0, 1):
        r = res[rank]
        assert (r["current"], r["previous"]) == (2, 1), r
        assert any(f.endswith(".distcp") for f in r["files"]) and ".metadata" in r["files"]
        assert "checkpoint.dcp' is corrupt: __" in r["flipped"] and "SHA-256" in r["flipped"], r
        assert r["fallback"] == 1 and "resuming from the previous checkpoint" in r["warning"], r
        err = r["dcp_error"]
        assert len(err.splitlines()) == 1 and "checkpoint.prev.dcp' could not be read on rank(s)" in err, err
        assert "Traceback" not in err
