"""``train_step``'s gradient norm: taken only where something needs it (a logged step, or clipping), and then right."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.bench.step import random_batch
from lowbit.models import CLIP, get_config
from lowbit.train.env import Env
from lowbit.train.step import train_step
from lowbit.train.trainer import Trainer


def _trainer(grad_clip: float = 0.0) -> tuple[Trainer, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = CLIP(get_config("tiny"))
    env = Env(world_size=1, rank=0, parallel=None, device=torch.device("cpu"), precision="fp32")
    tr = Trainer(model=model, raw_model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), env=env,
                 grad_clip=grad_clip)
    return tr, [random_batch(model, 4, env.device)]


def _norm(model: torch.nn.Module) -> float:
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))


def test_an_unlogged_step_without_clipping_never_reads_the_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """StableAdamW clips its own updates: a step that logs nothing and clips nothing takes no norm (and does not
    scale every gradient by 1.0 as ``clip_grad_norm_(inf)`` did)."""
    tr, micro = _trainer()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the gradient norm was taken")

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", refuse)
    monkeypatch.setattr(torch.nn.utils, "get_total_norm", refuse)
    loss, grad_norm = train_step(tr, micro, 1, logging=False)
    assert math.isfinite(loss) and math.isnan(grad_norm)


def test_a_logged_step_reports_the_norm_and_leaves_the_gradients_alone() -> None:
    tr, micro = _trainer()
    _, grad_norm = train_step(tr, micro, 1, logging=True)
    expected = _norm(tr.raw_model)  # the optimizer reads the gradients, it does not change them
    assert expected > 0 and float(grad_norm) == pytest.approx(expected, rel=1e-5)


def test_clipping_still_takes_the_norm_and_scales_the_gradients() -> None:
    tr, micro = _trainer()
    _, unclipped = train_step(tr, micro, 1, logging=True)
    tr, micro = _trainer(grad_clip=float(unclipped) / 4)
    _, grad_norm = train_step(tr, micro, 1, logging=False)  # clipping needs the norm even on an unlogged step
    assert float(grad_norm) == pytest.approx(float(unclipped), rel=1e-5)  # the norm before clipping
    assert _norm(tr.raw_model) == pytest.approx(float(unclipped) / 4, rel=1e-4)
