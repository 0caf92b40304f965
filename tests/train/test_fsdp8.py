"""FSDP2 8-bit weight all-gather (``lowbit.train.fsdp8``), 2 gloo processes on the CPU.

* Exact: a tiny CLIP trained 3 StableAdamW steps with every weight gathered as its int8/e4m3 codes gives the
  same losses, gradients and parameters, bit for bit, as the 16-bit gather (fp32 and bf16 parameters, every
  recipe that can; ``switchback-q`` keeps the 16-bit gather). Also unevenly sharded weights (37 rows, and a
  1-row weight whose second shard is empty): FSDP pads the shards, the codes are padded alike.
* Bytes: counted at FSDP's all-gather call (``set_custom_all_gather``), the 8-bit run moves exactly
  ``gathers x shard elements x (itemsize - 1)`` fewer bytes: each linear weight travels in 1 byte per element,
  half of bf16 (a quarter of fp32, the CPU parameter dtype).
* Codes: after ``precompute_scales`` (one all-reduce for all weights, all shards quantized together) a gather
  sends those codes; without it, a weight's first gather after a change all-reduces its absmax and quantizes its
  shard, and the backward's re-gather reuses them. Same numbers either way.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

SMALL = {"vision": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
         "text": {"width": 32, "layers": 1, "heads": 2, "context_length": 24}, "embed_dim": 32}
RECIPES = ["switchback", "switchback-m", "fp8-switchback", "fp8-tensorwise", "switchback-sim", "switchback-q"]
STEPS = 3


def _local(t: torch.Tensor) -> torch.Tensor:
    return (t.to_local() if hasattr(t, "to_local") else t).detach().clone()


def _train(rank: int, model: torch.nn.Module, batches: list, eight: bool, precompute: bool = True) -> dict:
    from lowbit.optim import StableAdamW
    from lowbit.train import fsdp8
    from lowbit.train.distributed import average_replicated_grads, contrastive_loss

    names = fsdp8.enable_8bit_allgather(model) if eight else []
    counter = fsdp8.count_allgather_bytes(model)
    opt = StableAdamW(model.parameters(), lr=1e-2)
    losses, grads = [], []
    for x, t in batches:
        opt.zero_grad()
        out = model(x, t) if t is not None else model(x)
        loss = contrastive_loss(*out) if t is not None else out.square().mean()
        loss.backward()
        if t is not None:
            average_replicated_grads(model)
        grads.append([_local(p.grad) for p in model.parameters()])
        opt.step()
        if precompute:
            fsdp8.precompute_scales(model)
        losses.append(loss.item())
    gathers = getattr(model, "_lowbit_gather8", [])
    return {
        "losses": losses, "grads": grads, "params": [_local(p) for p in model.parameters()], "names": names,
        "bytes": counter.input_bytes, "calls": counter.calls,
        # what the 8-bit gather saved: per weight, gathers x padded shard elements x (16-bit itemsize - 1)
        "saved": sum(g.gathers * g.fsdp_param.padded_sharded_param_size.numel() * (g.dtype.itemsize - 1)
                     for g in gathers),
        "reduces": sum(g.reduces for g in gathers), "gathers": sum(g.gathers for g in gathers),
        "quantized": sum(g.quantized for g in gathers),
        "analytic": fsdp8.weight_allgather_bytes(model),
    }


def _worker(rank: int, world: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        from lowbit.models import CLIP, convert_clip, get_config
        from lowbit.nn import LowbitLinear
        from lowbit.train.distributed import shard_model

        cfg = get_config("tiny", **SMALL)
        batches = []
        for step in range(STEPS):
            g = torch.Generator().manual_seed(step)
            x, t = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 200, (8, 24), generator=g)
            batches.append((x[rank * 4 : (rank + 1) * 4], t[rank * 4 : (rank + 1) * 4]))
        out = {}
        for bf16 in (False, True):
            for name in RECIPES:
                for eight in (False, True):
                    torch.manual_seed(0)
                    model = shard_model(convert_clip(CLIP(cfg), name), torch.device("cpu"), bf16_params=bf16)
                    out[("clip", bf16, name, eight)] = _train(rank, model, batches, eight)
            # uneven shards: 37 rows over 2 ranks (19 + 18, padded), and 1 row (the second shard is empty)
            mesh = init_device_mesh("cpu", (world,))
            mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None)
            xs = [(torch.randn(5, 16, generator=torch.Generator().manual_seed(10 * rank + s)), None) for s in range(STEPS)]
            for eight in (False, True):
                torch.manual_seed(0)
                model = torch.nn.Sequential(LowbitLinear(16, 37), torch.nn.GELU(), LowbitLinear(37, 1))
                for layer in (model[0], model[2], model):
                    fully_shard(layer, mesh=mesh, mp_policy=mp_policy)
                out[("uneven", bf16, "switchback", eight)] = _train(rank, model, xs, eight)
        # without precompute_scales: every gather all-reduces its own absmax; same numbers
        torch.manual_seed(0)
        model = shard_model(convert_clip(CLIP(cfg), "switchback"), torch.device("cpu"), bf16_params=True)
        out["no-precompute"] = _train(rank, model, batches, True, precompute=False)
        results[rank] = out
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(gloo_spawn) -> dict:
    return gloo_spawn(_worker)


pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def _cases(res: dict) -> list:
    return sorted({k[:3] for k in res if isinstance(k, tuple)})


def test_8bit_allgather_is_bit_exact(runs: dict) -> None:
    for rank, res in runs.items():
        for case in _cases(res):
            a, b = res[(*case, False)], res[(*case, True)]
            assert a["losses"] == b["losses"], (rank, case)
            for ga, gb in zip(a["grads"], b["grads"]):
                assert all(torch.equal(x, y) for x, y in zip(ga, gb)), (rank, case)
            assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"])), (rank, case)
    assert runs[0][("clip", True, "switchback", True)]["losses"] == runs[1][("clip", True, "switchback", True)]["losses"]


def test_which_weights_gather_8bit(runs: dict) -> None:
    res = runs[0]
    for (kind, _bf16, name, eight), r in ((k, v) for k, v in res.items() if isinstance(k, tuple)):
        if not eight:
            assert r["names"] == [] and r["saved"] == 0
        elif kind == "uneven":
            assert r["names"] == ["0.weight", "2.weight"]
        elif name == "switchback-q":  # row-wise W: the 16-bit gather, as before
            assert r["names"] == [], r["names"]
        else:  # every block linear of both towers: qkv, out, fc1, fc2
            assert len(r["names"]) == 8 and all("blocks.0" in n for n in r["names"]), r["names"]


def test_8bit_allgather_moves_half_the_bf16_weight_bytes(runs: dict) -> None:
    for res in runs.values():
        for case in _cases(res):
            a, b = res[(*case, False)], res[(*case, True)]
            assert a["calls"] == b["calls"] > 0
            assert a["bytes"] - b["bytes"] == b["saved"], case  # only the weights shrank, to 1 byte an element
            if b["names"]:
                assert b["saved"] > 0 and b["gathers"] >= 2 * STEPS * len(b["names"])  # forward + backward gathers
                wide = 2 if case[1] else 4  # bf16 parameters on the GPU; fp32 on the CPU
                assert b["analytic"]["16bit"] == wide * b["analytic"]["configured"], case


def test_precomputed_scales_save_the_per_weight_allreduce(runs: dict) -> None:
    for res in runs.values():
        pre, own = res[("clip", True, "switchback", True)], res["no-precompute"]
        assert pre["losses"] == own["losses"]
        assert all(torch.equal(x, y) for x, y in zip(pre["params"], own["params"]))
        n = len(pre["names"])
        assert own["gathers"] == pre["gathers"] == 2 * STEPS * n  # forward and backward (FSDP reshards after it)
        # without precompute: one all-reduce and one quantization per weight per step (the backward's gather
        # reuses the forward's codes); with it, only the first forward's (before any precompute)
        assert own["reduces"] == own["quantized"] == STEPS * n
        assert pre["reduces"] == pre["quantized"] == n


def test_absmax_bits_order_like_values_with_nan_on_top() -> None:
    from lowbit.train.fsdp8 import _abs_bits

    vals = torch.tensor([0.0, 1e-30, 1.0, 3.5, float("inf"), float("nan"), -float("nan")])
    bits = _abs_bits(vals.abs())
    assert bits.tolist() == sorted(bits.tolist())[:5] + bits.tolist()[5:]  # finite and inf ascending
    assert bits[5] == bits[6] > bits[4]  # any NaN (either sign) above inf: a MAX all-reduce propagates it
