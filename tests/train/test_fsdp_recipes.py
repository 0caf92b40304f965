"""Every recipe's LowbitLinear under FSDP2 (2 gloo processes, CPU): forward, backward and a StableAdamW step
on the sharded model. fp32 parameters: the loss of the two ranks' halves, gathered, equals the unsharded
model's loss on the whole batch (rel. 1e-5; tensorwise-scaled fp8 activations depend on the batch, so 2e-2
there). bf16 parameters (``MixedPrecisionPolicy(param_dtype=bf16)``, the GPU setting): finite, within 5e-2."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

SMALL = {"vision": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
         "text": {"width": 32, "layers": 1, "heads": 2, "context_length": 24}, "embed_dim": 32}


def _worker(rank: int, world: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from lowbit.functional.recipe import RECIPES
        from lowbit.models import CLIP, clip_loss, convert_clip, get_config
        from lowbit.optim import StableAdamW
        from lowbit.train.distributed import average_replicated_grads, contrastive_loss, shard_model

        cfg = get_config("tiny", **SMALL)
        g = torch.Generator().manual_seed(0)
        x, t = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 200, (8, 24), generator=g)
        xs, ts = x[rank * 4 : (rank + 1) * 4], t[rank * 4 : (rank + 1) * 4]
        out = {}
        for bf16 in (False, True):
            for name in RECIPES:
                torch.manual_seed(0)
                ref = convert_clip(CLIP(cfg), name)
                torch.manual_seed(0)
                model = shard_model(convert_clip(CLIP(cfg), name), torch.device("cpu"), bf16_params=bf16)
                with torch.no_grad():
                    want = float(clip_loss(*ref(x, t)))
                loss = contrastive_loss(*model(xs, ts))
                loss.backward()
                average_replicated_grads(model)
                StableAdamW(model.parameters(), lr=1e-3).step()
                finite = all(
                    bool(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all()) for p in model.parameters()
                )
                out[(bf16, name)] = (float(loss), want, finite)
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_every_recipe_trains_under_fsdp2(gloo_spawn) -> None:
    res = gloo_spawn(_worker)
    assert res[0] == res[1]  # the same global loss on both ranks
    for (bf16, name), (got, want, finite) in res[0].items():
        assert finite, (bf16, name)
        tol = 5e-2 if bf16 else 2e-2 if "tensorwise" in name else 1e-5
        assert abs(got - want) <= tol * abs(want), (bf16, name, got, want)
