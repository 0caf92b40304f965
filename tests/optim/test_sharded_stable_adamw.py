"""StableAdamW on FSDP2-style sharded parameters (DTensors, Shard(0)) across 2 gloo processes takes the same
steps as on the unsharded tensors: the RMS is over the whole tensor (partial sums all-reduced once per step)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from lowbit.optim import StableAdamW

# uneven first dims (7, 3, 1) exercise FSDP's padded sharding; the (1,) tensor is empty on rank 1
SHAPES = [(7, 5), (16, 8), (3,), (1,), (33, 4, 2)]
STEPS = 6
JUMP = 4  # step with gradients x 1e3: RMS >> 1, update clipping engaged
TOL = 1e-6  # fp32: max |Δθ| / max(1, |θ|) after 6 steps (only the RMS's summation order differs: a few ulp)


def _grads(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    scale = 1e3 if step == JUMP else 1e-3 if step < JUMP else 1.0
    return [scale * torch.randn(s, generator=g) for s in SHAPES]


def _worker(rank: int, world: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor

        mesh = init_device_mesh("cpu", (world,))
        g0 = torch.Generator().manual_seed(0)
        init = [torch.randn(s, generator=g0) for s in SHAPES]
        ref = [torch.nn.Parameter(t.clone()) for t in init]
        shd = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, [Shard(0)])) for t in init]
        kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1)
        opt_ref = StableAdamW([{"params": ref[:3]}, {"params": ref[3:], "weight_decay": 0.0}], **kw)
        opt_shd = StableAdamW([{"params": shd[:3]}, {"params": shd[3:], "weight_decay": 0.0}], **kw)
        calls = []
        real = dist.all_reduce

        def counting(*a, **k):
            calls.append(1)
            return real(*a, **k)

        dist.all_reduce = counting
        max_diff, rms_diff, rms_jump, per_step_calls = 0.0, 0.0, 0.0, []
        try:
            for step in range(1, STEPS + 1):
                for r, s, g in zip(ref, shd, _grads(step)):
                    r.grad = g.clone()
                    s.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
                n0 = len(calls)
                opt_ref.step()
                opt_shd.step()
                per_step_calls.append(len(calls) - n0)
                for r, s in zip(ref, shd):
                    full, want = s.detach().full_tensor(), r.detach()
                    max_diff = max(max_diff, float(((full - want).abs() / want.abs().clamp_min(1.0)).max()))
                    rr, rs = opt_ref.state[r]["rms"], opt_shd.state[s]["rms"]
                    assert not hasattr(rs, "to_local") and rs.ndim == 0
                    rms_diff = max(rms_diff, float((rr - rs).abs() / rr.clamp_min(1e-12)))
                    if step == JUMP:
                        rms_jump = max(rms_jump, float(rs))
        finally:
            dist.all_reduce = real
        results[rank] = {"max_diff": max_diff, "rms_rel": rms_diff, "rms_jump": rms_jump, "calls": per_step_calls,
                         "exp_avg_is_sharded": type(opt_shd.state[shd[0]]["exp_avg"]).__name__}
    finally:
        dist.destroy_process_group()


def test_sharded_and_unsharded_take_the_same_steps(gloo_spawn) -> None:
    res = gloo_spawn(_worker)
    for rank in (0, 1):
        r = res[rank]
        assert r["max_diff"] <= TOL, r
        assert r["rms_rel"] <= 1e-5, r  # the global RMS, identical on every rank
        assert r["rms_jump"] > 1.0, r  # clipping was engaged
        assert r["calls"] == [2] * STEPS, r  # one all_reduce per param group per step (2 groups)
        assert r["exp_avg_is_sharded"] == "DTensor"
