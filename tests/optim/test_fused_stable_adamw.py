"""The fused (Triton) StableAdamW, run by the Triton interpreter on CPU tensors at tiny sizes.

Each step is checked against SPEC §5 evaluated in float64 on the optimizer's own state before the step
(so rounding does not accumulate in the comparison), and whole runs are compared with the reference.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lowbit.optim import StableAdamW, _fused, _fused_plan

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or _fused.interpreter_mode()),
    reason="needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py on CPU-only machines)",
)

HYPER = dict(lr=5e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1)
# sizes chosen to hit: several blocks and partials per tensor, a ragged tail, an exact block, a scalar
SHAPES = [(70, 50), (1,), (1030,), (16, 64), (3, 5, 7)]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def spec_step(p, g, m, v, t, *, lr, betas, eps, weight_decay, clip=True, maximize=False):
    """SPEC §5, float64, one tensor: returns (θ, m, v, RMS)."""
    p, g, m, v = (x.double() for x in (p, g, m, v))
    if maximize:
        g = -g
    b1, b2 = betas
    b1h = b1 * (1 - b1 ** (t - 1)) / (1 - b1**t)
    b2h = b2 * (1 - b2 ** (t - 1)) / (1 - b2**t)
    m = b1h * m + (1 - b1h) * g
    v = b2h * v + (1 - b2h) * g * g
    rms = float((g * g / v.clamp_min(eps * eps)).mean().sqrt())
    eta = lr / max(1.0, rms) if clip else lr
    return p - eta * weight_decay * p - eta * m / (v.sqrt() + eps), m, v, rms


def grads_at(t: int, params, gen: torch.Generator, jump_at: int = 9):
    out = []
    for i, p in enumerate(params):
        scale = (1e-3 if t < jump_at else 1e-1) if i == 0 else 1.0
        g = torch.randn(p.shape, generator=gen) * scale + 0.3 * p.detach().float().cpu() * scale
        out.append(g.to(device=p.device, dtype=p.dtype))
    return out


def close(got: torch.Tensor, want: torch.Tensor, scale: torch.Tensor, rtol: float, what: str) -> None:
    err = (got.detach().double() - want).abs()
    bad = err > rtol * scale
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} elements off, worst {float((err / scale).max()):.2e} × scale"
    )


def check_run(steps: int, dtype=torch.float32, state_dtype=None, rtol=2e-6, maximize=False, clip=True):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, device=DEVICE).to(dtype)) for s in SHAPES]
    opt = StableAdamW(
        params, **HYPER, fused=True, state_dtype=state_dtype, maximize=maximize, clip_update=clip
    )
    gen = torch.Generator().manual_seed(1)
    saw_clip = False
    for t in range(1, steps + 1):
        grads = grads_at(t, params, gen)
        before = []
        for p, g in zip(params, grads):
            st = opt.state.get(p)
            m = st["exp_avg"].clone() if st else torch.zeros_like(p, dtype=state_dtype or dtype)
            v = st["exp_avg_sq"].clone() if st else torch.zeros_like(p, dtype=state_dtype or dtype)
            before.append((p.detach().clone(), g, m, v))
            p.grad = g
        opt.step()
        for p, (p0, g, m0, v0) in zip(params, before):
            want_p, want_m, want_v, want_rms = spec_step(
                p0, g, m0, v0, t, **HYPER, maximize=maximize, clip=clip
            )
            st = opt.state[p]
            assert float(st["step"]) == t
            assert float(st["rms"]) == pytest.approx(want_rms, rel=1e-5), f"rms, step {t}"
            g64, m64, p64 = g.double(), m0.double(), p0.double()
            upd = want_m.abs() / (want_v.sqrt() + HYPER["eps"])
            # errors of a few roundings of each operand: scale tolerances by the operands' magnitudes
            close(st["exp_avg"], want_m, m64.abs() + g64.abs(), rtol, f"m, step {t}")
            close(st["exp_avg_sq"], want_v, v0.double() + g64 * g64, rtol, f"v, step {t}")
            close(p, want_p, p64.abs() + HYPER["lr"] * (upd + 1.0), rtol, f"p, step {t}")
            saw_clip |= want_rms > 1.0
    return saw_clip


def test_fused_steps_match_spec_float32() -> None:
    assert check_run(12), "the gradient jump should engage clipping"


@pytest.mark.parametrize(
    "cfg",
    [
        # many phase-1 tiles per tensor (28 partials for 70×50), summed 8 at a time; phase 2 right behind
        dict(block=128, p1_blocks=1, p2_blocks=1, rblock=8, l2_budget_bytes=0, programs_per_sm=1),
        dict(reverse_phase2=False, p2_blocks=2, l2_budget_bytes=1 << 30),  # all phase 1 first, in order
        dict(block=64, p1_blocks=3, p2_blocks=5, rblock=16),  # tiles of odd block counts, ragged tails
    ],
)
def test_fused_launch_layouts_agree(cfg, monkeypatch) -> None:
    for k, v in cfg.items():
        monkeypatch.setattr(_fused.config, k, v)
    check_run(4)


def test_fused_maximize_and_clip_off() -> None:
    check_run(3, maximize=True)
    check_run(3, clip=False)


@pytest.mark.parametrize("state_dtype", [None, torch.float32])
def test_fused_bf16_params(state_dtype) -> None:
    # one rounding to bf16 per stored value: compare at bf16 resolution
    check_run(4, dtype=torch.bfloat16, state_dtype=state_dtype, rtol=1e-2)


def test_fused_matches_reference_over_many_steps() -> None:
    torch.manual_seed(0)
    base = [torch.randn(s, device=DEVICE) for s in SHAPES]
    runs = {}
    for name, kw in {"fused": dict(fused=True), "reference": dict(foreach=False)}.items():
        ps = [torch.nn.Parameter(b.clone()) for b in base]
        opt = StableAdamW(ps, **HYPER, **kw)
        gen = torch.Generator().manual_seed(2)
        rms = []
        for t in range(1, 31):
            for p, g in zip(ps, grads_at(t, ps, gen, jump_at=20)):
                p.grad = g
            opt.step()
            rms.append([float(opt.state[p]["rms"]) for p in ps])
        runs[name] = (ps, rms)
    for a, b in zip(runs["fused"][0], runs["reference"][0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)
    fr, rr = torch.tensor(runs["fused"][1]), torch.tensor(runs["reference"][1])
    torch.testing.assert_close(fr, rr, rtol=1e-5, atol=0)
    assert fr[19, 0] > 1.0  # clipping engaged at the jump


def test_fused_unaligned_and_noncontiguous_params() -> None:
    """An unaligned view (ALIGNED=False kernel) and a transposed param (reference fallback) in one step."""
    torch.manual_seed(0)
    storage = torch.randn(3 + 40 * 9, device=DEVICE)
    unaligned = torch.nn.Parameter(storage[3:].view(40, 9))  # data_ptr 12 bytes past an allocation
    transposed = torch.nn.Parameter(torch.randn(9, 40, device=DEVICE).t())
    plain = torch.nn.Parameter(torch.randn(33, device=DEVICE))
    assert unaligned.data_ptr() % 16 != 0 and not transposed.is_contiguous()
    params = [unaligned, transposed, plain]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = StableAdamW(params, **HYPER, fused=True)
    opt_ref = StableAdamW(ref, **HYPER, foreach=False)
    for _ in range(3):
        for p, r in zip(params, ref):
            g = torch.randn(p.shape, device=DEVICE)
            p.grad, r.grad = g.clone(), g.clone()
        opt.step()
        opt_ref.step()
    for p, r in zip(params, ref):
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7)


def test_item_order_interleaves_phases_with_the_lag() -> None:
    """Every tile once; a tensor's phase 2 after all its phase 1 plus the lag; big tensors last-read-first."""
    cfg = _fused_plan.FusedConfig(block=4, p1_blocks=2, p2_blocks=1, l2_budget_bytes=3 * 8 * 8)  # lag: 3 tiles
    numels = [20, 3, 8, 1, 33]
    items = _fused_plan.item_order(numels, foot=8, cfg=cfg, grid=2)
    kind, tid, start = items[:, 0] & 1, items[:, 0] >> 1, items[:, 1]
    for t, n in enumerate(numels):
        assert sorted(start[(tid == t) & (kind == 0)]) == list(range(0, n, 8))
        p2 = start[(tid == t) & (kind == 1)]
        assert list(p2) == list(range(0, n, 4))[::-1]  # reverse_phase2
    p1_seen = (kind == 0).cumsum()
    n1 = int((kind == 0).sum())
    for t in range(len(numels)):
        last1 = int(np.nonzero((tid == t) & (kind == 0))[0].max())
        first2 = int(np.nonzero((tid == t) & (kind == 1))[0].min())
        assert first2 > last1
        assert p1_seen[first2] >= min(p1_seen[last1] + 3, n1)  # the lag (or the end of phase 1)
    # the phase-1 stream keeps tensor order, phase 2 too
    assert list(tid[kind == 0]) == sorted(tid[kind == 0])
    assert list(tid[kind == 1]) == sorted(tid[kind == 1])


def test_fused_rejects_float64_and_cpu_without_interpreter(monkeypatch) -> None:
    with pytest.raises(TypeError, match="fused"):
        StableAdamW([torch.nn.Parameter(torch.randn(3, dtype=torch.float64))], fused=True)
    if DEVICE == "cpu":
        monkeypatch.setattr(_fused, "interpreter_mode", lambda: False)
        p = torch.nn.Parameter(torch.randn(3))
        opt = StableAdamW([p], fused=True)
        p.grad = torch.randn(3)
        with pytest.raises(ValueError, match="CUDA"):
            opt.step()


def test_rms_bound() -> None:
    """RMS ≤ 1/sqrt(1 − β2) (SPEC §5) even for the worst case: zero history, then a huge gradient."""
    p = torch.nn.Parameter(torch.zeros(2000, device=DEVICE))
    opt = StableAdamW([p], **HYPER, fused=True)
    p.grad = torch.full_like(p, 1e-8)
    opt.step()
    p.grad = torch.full_like(p, 1e3)
    opt.step()
    rms = float(opt.state[p]["rms"])
    b2 = HYPER["betas"][1]
    t = 2
    b2h = b2 * (1 - b2 ** (t - 1)) / (1 - b2**t)
    assert rms == pytest.approx(1 / math.sqrt(1 - b2h), rel=1e-4)
    assert rms <= 1 / math.sqrt(1 - b2)


def test_fused_follows_moved_tensors_and_mixed_steps() -> None:
    """The cached launch tables are rebuilt when an address changes; tensors at different steps split."""
    torch.manual_seed(0)
    base = [torch.randn(s, device=DEVICE) for s in [(40, 9), (300,), (17,)]]
    runs = {}
    for name, kw in {"fused": dict(fused=True), "reference": dict(foreach=False)}.items():
        ps = [torch.nn.Parameter(b.clone()) for b in base]
        opt = StableAdamW(ps, **HYPER, **kw)
        gen = torch.Generator().manual_seed(5)
        for t in range(1, 7):
            for i, p in enumerate(ps):
                g = torch.randn(p.shape, generator=gen).to(DEVICE)
                p.grad = None if (i == 1 and t == 2) else g  # param 1 skips step 2: its step count lags
            if t == 4:
                ps[0].data = ps[0].data.clone()  # same Parameter object, new storage
                st = opt.state[ps[2]]
                st["exp_avg"] = st["exp_avg"].clone()  # a state tensor replaced by a new object
            opt.step()
        runs[name] = (ps, opt)
    (pf, of), (pr, _) = runs["fused"], runs["reference"]
    assert [float(of.state[p]["step"]) for p in pf] == [6.0, 5.0, 6.0]
    for a, b in zip(pf, pr):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
