"""RMSMonitor against hand computations (torch AdamW/Adam, StableAdamW) and on a planted spike."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lowbit.monitor import RMSMonitor, adam_rms
from lowbit.optim import StableAdamW

BETAS = (0.9, 0.98)
EPS = 1e-6


class Toy(nn.Module):
    """Parameters named like CLIP's: patch embedding, a vision MLP, a text attention projection."""

    def __init__(self) -> None:
        super().__init__()
        self.visual = nn.Module()
        self.visual.conv1 = nn.Conv2d(3, 8, 4, bias=False)
        self.visual.mlp = nn.Linear(8, 16)
        self.transformer = nn.Module()
        self.transformer.in_proj = nn.Linear(16, 24)


def set_grads(model: nn.Module, step: int, gen: torch.Generator, spikes: dict[str, tuple[int, float]] = {}):  # noqa: B006
    """Noise gradients; some exactly zero and some below ε (so the ε² floor matters); planted jumps."""
    for name, p in model.named_parameters():
        g = torch.randn(p.shape, generator=gen) * 1e-3
        flat = g.view(-1)
        flat[::7] = 0.0
        flat[3::11] = 1e-9
        if name in spikes and spikes[name][0] == step:
            g = g * spikes[name][1]
        p.grad = g


def hand_rms(p: torch.Tensor, opt: torch.optim.Optimizer, *, folded: bool, coupled_wd: float = 0.0) -> float:
    """RMS_t by hand in float64 from the optimizer's state before its step (SPEC §4)."""
    g = p.grad.double()
    if coupled_wd:
        g = g + coupled_wd * p.detach().double()
    st = opt.state.get(p, {})
    b2 = BETAS[1]
    if not st:
        v = g * g  # v̂_1 = g²
    else:
        t = float(st["step"]) + 1
        v_old = st["exp_avg_sq"].double()
        if folded:
            b2h = b2 * (1 - b2 ** (t - 1)) / (1 - b2**t)
            v = b2h * v_old + (1 - b2h) * g * g
        else:
            v = (b2 * v_old + (1 - b2) * g * g) / (1 - b2**t)
    return math.sqrt(float((g * g / v.clamp_min(EPS * EPS)).mean()))


@pytest.mark.parametrize("kind", ["adamw", "adam-coupled", "stable"])
def test_rms_matches_hand_computation(kind: str) -> None:
    torch.manual_seed(0)
    model = Toy()
    if kind == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=BETAS, eps=EPS, weight_decay=0.1)
    elif kind == "adam-coupled":
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=BETAS, eps=EPS, weight_decay=0.1)
    else:
        opt = StableAdamW(model.parameters(), lr=1e-2, betas=BETAS, eps=EPS, weight_decay=0.1)
    mon = RMSMonitor(model, opt, history=64)
    assert mon.names == ["visual.conv1.weight", "visual.mlp.weight", "visual.mlp.bias",
                         "transformer.in_proj.weight", "transformer.in_proj.bias"]  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    params = dict(model.named_parameters())
    for step in range(1, 31):
        set_grads(model, step, gen, {"visual.mlp.weight": (20, 100.0)})
        want = [
            hand_rms(
                params[n], opt, folded=kind == "stable", coupled_wd=0.1 if kind == "adam-coupled" else 0.0
            )
            for n in mon.names
        ]
        mon.update(step)
        opt.step()
        got = mon.history()["rms"][-1]
        np.testing.assert_allclose(got, want, rtol=2e-5, err_msg=f"step {step}")
        if kind == "stable":  # the monitor's pre-step value is what StableAdamW used in its step
            used = [float(opt.state[params[n]]["rms"]) for n in mon.names]
            np.testing.assert_allclose(got, used, rtol=2e-5)
        if step == 1:
            assert all(0.5 < x <= 1.0 + 1e-6 for x in got)  # v̂_1 = g²: 1 except at zero gradients
        if step == 20:
            assert got[1] > 2.0  # the planted 100× jump (diluted by coupled weight decay for Adam)


def test_device_steps_give_the_same_rms_as_host_steps() -> None:
    """The sync-free path (steps held as tensors, e.g. fused/capturable torch AdamW) agrees with floats."""
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, 4, generator=gen), torch.randn(7, generator=gen)]
    vs = [torch.rand(5, 4, generator=gen) * 1e-3, torch.rand(7, generator=gen) * 1e-12]
    a = adam_rms(grads, vs, [3.0, 10.0], beta2=0.99, eps=1e-6, bias_corrected=False)
    b = adam_rms(
        grads, vs, [torch.tensor(3.0), torch.tensor(10.0)], beta2=0.99, eps=1e-6, bias_corrected=False
    )
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    c = adam_rms(grads, [None, vs[1]], [0.0, 10.0], beta2=0.99, eps=1e-6, bias_corrected=False)
    assert float(c[0]) == pytest.approx(1.0, rel=1e-6)  # no state yet: v̂_1 = g²
    # chunking does not change the result
    d = adam_rms(grads, vs, [3.0, 10.0], beta2=0.99, eps=1e-6, bias_corrected=False, chunk_elems=1)
    torch.testing.assert_close(a, d, rtol=1e-6, atol=0)


def run_planted(steps: int = 140, spike_at: int = 104) -> RMSMonitor:
    """RMS jumps in the patch embedding at 100 and the vision MLP at 102; the loss spikes at 104."""
    torch.manual_seed(0)
    model = Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=EPS)
    mon = RMSMonitor(model, opt, history=256)
    gen = torch.Generator().manual_seed(3)
    rng = np.random.default_rng(0)
    planted = {"visual.conv1.weight": (100, 100.0), "visual.mlp.weight": (102, 100.0)}
    for step in range(1, steps + 1):
        set_grads(model, step, gen, planted)
        loss = 3.0 - 0.004 * step + 0.01 * rng.standard_normal()
        if spike_at <= step < spike_at + 3:
            loss += 1.0
        mon.record_loss(step, torch.tensor(loss))
        mon.update(step)
        opt.step()
    return mon


def test_spikes_finds_the_planted_spike_and_its_precursors() -> None:
    mon = run_planted()
    spikes = mon.spikes()
    assert len(spikes) == 1
    (s,) = spikes
    assert s.step == 104 and s.end_step == 106
    assert s.loss > s.baseline + 0.5
    assert [(p.name, p.lag) for p in s.precursors] == [("visual.conv1.weight", 4), ("visual.mlp.weight", 2)]
    assert s.first is not None and s.first.name == "visual.conv1.weight" and s.first.step == 100
    assert all(p.rms > 2.0 and p.peak >= p.rms for p in s.precursors)
    # with a window that ends before the RMS spikes, no precursor
    assert mon.spikes(max_lag=1)[0].precursors == ()


def test_no_spike_no_report() -> None:
    mon = run_planted(steps=100, spike_at=10_000)
    assert mon.spikes() == []


def test_metrics_keys_and_interval_max() -> None:
    mon = run_planted(steps=90)
    m = mon.metrics()
    assert set(m) == {f"rms/{n}" for n in mon.names} | {"rms_max", "rms_mean", "rms_max_interval"}
    assert m["rms_max"] == pytest.approx(max(m[f"rms/{n}"] for n in mon.names))
    assert m["rms_max_interval"] >= m["rms_max"]


def test_interval_max_catches_a_spike_between_log_lines() -> None:
    torch.manual_seed(0)
    model = Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=EPS)
    mon = RMSMonitor(model, opt, history=64)
    gen = torch.Generator().manual_seed(3)
    logged = {}
    for step in range(1, 61):
        set_grads(model, step, gen, {"visual.conv1.weight": (45, 100.0)})
        mon.update(step)
        opt.step()
        if step % 20 == 0:
            logged[step] = mon.metrics()
    assert logged[60]["rms_max_interval"] > 5.0 > logged[60]["rms_max"]
    assert logged[40]["rms_max_interval"] < 5.0


def test_rows_drain_each_step_once_and_history_is_bounded() -> None:
    torch.manual_seed(0)
    model = Toy()
    opt = StableAdamW(model.parameters())
    mon = RMSMonitor(model, opt, history=16)
    gen = torch.Generator().manual_seed(0)
    seen = []
    for step in range(1, 41):
        set_grads(model, step, gen)
        mon.record_loss(step, 1.0 / step)
        mon.update(step)
        opt.step()
        if step % 10 == 0:
            seen += mon.rows()
    assert [r["step"] for r in seen] == list(range(1, 41))
    assert all(r["loss"] == pytest.approx(1.0 / r["step"]) for r in seen)
    assert all(f"rms/{n}" in r for r in seen for n in mon.names)
    h = mon.history()
    assert list(h["steps"]) == list(range(25, 41)) and h["rms"].shape == (16, len(mon.names))


def test_params_without_grad_are_nan_and_unknown_optimizers_rejected() -> None:
    model = Toy()
    opt = torch.optim.AdamW(model.parameters())
    mon = RMSMonitor(model, opt)
    model.visual.conv1.weight.grad = torch.ones_like(model.visual.conv1.weight)
    mon.update(1)
    row = mon.history()["rms"][-1]
    assert row[0] == pytest.approx(1.0) and np.isnan(row[1:]).all()
    assert set(mon.metrics()) == {"rms/visual.conv1.weight", "rms_max", "rms_mean", "rms_max_interval"}
    with pytest.raises(TypeError, match="Adam"):
        RMSMonitor(model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_update_from_optimizer_equals_update_for_stable_adamw() -> None:
    torch.manual_seed(0)
    model = Toy()
    opt = StableAdamW(model.parameters(), lr=1e-2, betas=BETAS, eps=EPS)
    before, after = RMSMonitor(model, opt), RMSMonitor(model, opt)
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 26):
        set_grads(model, step, gen, {"visual.conv1.weight": (20, 100.0)})
        if step == 7:
            model.visual.mlp.bias.grad = None  # no gradient this step: NaN in both
        before.update(step)
        opt.step()
        after.update_from_optimizer(step)
    a, b = before.history()["rms"], after.history()["rms"]
    np.testing.assert_allclose(b, a, rtol=2e-5)
    assert np.isnan(b[6, 2]) and b[19, 0] > 2.0
    with pytest.raises(TypeError, match="StableAdamW"):
        RMSMonitor(model, torch.optim.AdamW(model.parameters())).update_from_optimizer(1)
