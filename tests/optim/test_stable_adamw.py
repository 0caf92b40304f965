"""StableAdamW against an independent float64 transcription of SPEC §5, torch AdamW, and itself."""

from __future__ import annotations

import copy
import functools
import io
import math

import numpy as np
import pytest
import torch

from lowbit.optim import StableAdamW, folded_betas
from lowbit.optim import _stable_adamw as sa
from lowbit.optim._foreach import _multi_tensor_stable_adamw

HYPER = dict(lr=2e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.2)
SHAPES = [(13, 7), (40,), (1,), (3, 4, 5)]
JUMP = 0  # index of the tensor whose gradient jumps 100× at step JUMP_AT
JUMP_AT = 81


def grad_for(i: int, t: int, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gradient of a quadratic plus noise; tensor JUMP is quiet (1e-3) until JUMP_AT, then 100× larger."""
    noise = rng.standard_normal(theta.shape)
    scale = 1.0
    if i == JUMP:
        scale = 1e-3 if t < JUMP_AT else 1e-1
    return 0.5 * theta * (scale if i == JUMP else 1.0) + noise * scale


def spec_trajectory(
    steps: int, clip: bool = True, **hyper
) -> tuple[list[list[np.ndarray]], list[list[float]]]:
    """SPEC §5 written out in float64 numpy; returns θ after every step and the RMS of every step."""
    h = {**HYPER, **hyper}
    lr, (b1, b2), eps, wd = h["lr"], h["betas"], h["eps"], h["weight_decay"]
    rng = np.random.default_rng(0)
    theta = [np.random.default_rng(100 + i).standard_normal(s) for i, s in enumerate(SHAPES)]
    m = [np.zeros(s) for s in SHAPES]
    v = [np.zeros(s) for s in SHAPES]
    thetas, rmss = [], []
    for t in range(1, steps + 1):
        row = []
        grads = [grad_for(i, t, theta[i], rng) for i in range(len(SHAPES))]
        for i, g in enumerate(grads):
            b1h = b1 * (1 - b1 ** (t - 1)) / (1 - b1**t)
            b2h = b2 * (1 - b2 ** (t - 1)) / (1 - b2**t)
            m[i] = b1h * m[i] + (1 - b1h) * g
            v[i] = b2h * v[i] + (1 - b2h) * g * g
            rms = math.sqrt(np.mean(g * g / np.maximum(v[i], eps * eps)))
            eta = lr / max(1.0, rms) if clip else lr
            theta[i] = theta[i] - eta * wd * theta[i] - eta * m[i] / (np.sqrt(v[i]) + eps)
            row.append(rms)
        thetas.append([x.copy() for x in theta])
        rmss.append(row)
    return thetas, rmss


def torch_trajectory(make_opt, steps: int, dtype=torch.float64):
    """The same problem driven through a torch optimizer; gradients computed from its own θ."""
    rng = np.random.default_rng(0)
    params = [
        torch.nn.Parameter(torch.tensor(np.random.default_rng(100 + i).standard_normal(s), dtype=dtype))
        for i, s in enumerate(SHAPES)
    ]
    opt = make_opt(params)
    thetas, rmss = [], []
    for t in range(1, steps + 1):
        for i, p in enumerate(params):
            g = grad_for(i, t, p.detach().double().numpy(), rng)
            p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
        thetas.append([p.detach().double().numpy().copy() for p in params])
        if isinstance(opt, StableAdamW):
            rmss.append([float(opt.state[p]["rms"]) for p in params])
    return thetas, rmss, opt, params


_MULTI = _multi_tensor_stable_adamw


def _patched(monkeypatch, engine: str | None, host_scalars: bool | None = None) -> None:
    """Force one engine of the multi-tensor path (the CPU default is the 'cpu' engine)."""
    fn = functools.partial(_MULTI, engine=engine, host_scalars=host_scalars)
    monkeypatch.setattr(sa, "_multi_tensor_stable_adamw", fn)


IMPLS = {
    "reference": (dict(foreach=False), None, None),
    "cpu-engine": (dict(foreach=True), "cpu", None),
    "foreach-host": (dict(foreach=True), "foreach", True),
    "foreach-device": (dict(foreach=True), "foreach", False),
}


@pytest.mark.parametrize("impl", list(IMPLS))
def test_float64_trajectory_matches_spec_with_clipping(impl: str, monkeypatch) -> None:
    kwargs, engine, host = IMPLS[impl]
    if engine is not None:
        _patched(monkeypatch, engine, host)
    steps = 120
    want, want_rms = spec_trajectory(steps)
    got, got_rms, _, _ = torch_trajectory(lambda ps: StableAdamW(ps, **HYPER, **kwargs), steps)
    for t in range(steps):
        for i in range(len(SHAPES)):
            np.testing.assert_allclose(got[t][i], want[t][i], rtol=1e-10, atol=1e-12, err_msg=f"step {t + 1}")
    np.testing.assert_allclose(np.array(got_rms), np.array(want_rms), rtol=1e-6)  # state['rms'] is float32
    # the planted jump engages clipping, and only there
    assert want_rms[JUMP_AT - 1][JUMP] > 5.0
    assert max(r[JUMP] for r in want_rms[20 : JUMP_AT - 1]) < 2.0
    assert max(max(r) for r in want_rms) <= 1 / math.sqrt(1 - HYPER["betas"][1]) + 1e-9  # SPEC §5 bound


@pytest.mark.parametrize("impl", list(IMPLS))
def test_float32_trajectory_close_to_spec(impl: str, monkeypatch) -> None:
    kwargs, engine, host = IMPLS[impl]
    if engine is not None:
        _patched(monkeypatch, engine, host)
    steps = 100
    want, _ = spec_trajectory(steps)
    got, _, _, _ = torch_trajectory(lambda ps: StableAdamW(ps, **HYPER, **kwargs), steps, dtype=torch.float32)
    for i in range(len(SHAPES)):  # fp32 rounding accumulated over 100 steps of size ~lr
        np.testing.assert_allclose(got[-1][i], want[-1][i], rtol=1e-4, atol=2e-5)


def test_clipped_step_is_unclipped_step_divided_by_rms() -> None:
    """At the jump, Δθ(clip) · RMS == Δθ(no clip) exactly (float64), and RMS > 1."""
    _, _, opt, params = torch_trajectory(lambda ps: StableAdamW(ps, **HYPER), JUMP_AT - 1)
    rng = np.random.default_rng(123)
    g = torch.tensor(grad_for(JUMP, JUMP_AT, params[JUMP].detach().numpy(), rng))
    for p in params:
        p.grad = None
    params[JUMP].grad = g
    before = params[JUMP].detach().clone()
    opt_off = copy.deepcopy(opt)
    for group in opt_off.param_groups:
        group["clip_update"] = False
    p_off = opt_off.param_groups[0]["params"][JUMP]
    p_off.grad = g.clone()  # deepcopy does not copy .grad
    opt.step()
    opt_off.step()
    rms = float(opt.state[params[JUMP]]["rms"])
    assert rms > 1.0
    assert float(opt_off.state[p_off]["rms"]) == pytest.approx(rms, rel=1e-14)
    d_clip = params[JUMP].detach() - before
    d_off = p_off.detach() - before
    ratio = d_off / d_clip  # a single factor for the whole tensor ...
    assert float(ratio.max() - ratio.min()) <= 1e-12 * float(ratio.mean())
    assert float(ratio.mean()) == pytest.approx(rms, rel=1e-7)  # ... equal to RMS (stored as float32)
    # the moments do not depend on the clipping
    torch.testing.assert_close(
        opt.state[params[JUMP]]["exp_avg"], opt_off.state[p_off]["exp_avg"], rtol=0, atol=0
    )


def _adamw_vs_stable(dtype, steps: int, kwargs: dict, rtol: float, atol: float, monkeypatch=None) -> None:
    torch.manual_seed(0)
    base = [torch.randn(s, dtype=dtype) for s in SHAPES]

    def make(cls, **kw):
        ps = [torch.nn.Parameter(b.clone()) for b in base]
        groups = [{"params": ps[:2]}, {"params": ps[2:], "lr": 5e-3, "weight_decay": 0.0}]
        opt = cls(groups, **HYPER, **kw)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.05 * s))
        return ps, opt, sched

    pa, oa, sa_ = make(torch.optim.AdamW)
    ps, os_, ss = make(StableAdamW, clip_update=False, **kwargs)
    g = torch.Generator().manual_seed(1)
    for t in range(steps):
        for a, b in zip(pa, ps):
            grad = torch.randn(a.shape, generator=g, dtype=dtype) * (100.0 if t == 70 else 1e-2)
            grad = grad + 0.3 * a.detach()
            a.grad, b.grad = grad.clone(), grad.clone()
        oa.step()
        os_.step()
        sa_.step()
        ss.step()
    for a, b in zip(pa, ps):
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol)
    # the state holds AdamW's moments with the bias correction applied
    for a, b in zip(pa, ps):
        t = float(oa.state[a]["step"])
        b1, b2 = HYPER["betas"]
        torch.testing.assert_close(
            os_.state[b]["exp_avg"], oa.state[a]["exp_avg"] / (1 - b1**t), rtol=rtol, atol=atol
        )
        torch.testing.assert_close(
            os_.state[b]["exp_avg_sq"], oa.state[a]["exp_avg_sq"] / (1 - b2**t), rtol=rtol, atol=atol**2
        )


@pytest.mark.parametrize("impl", list(IMPLS))
def test_clip_off_equals_torch_adamw_float64(impl: str, monkeypatch) -> None:
    kwargs, engine, host = IMPLS[impl]
    if engine is not None:
        _patched(monkeypatch, engine, host)
    _adamw_vs_stable(torch.float64, 150, kwargs, rtol=1e-11, atol=1e-13)


def test_clip_off_equals_torch_adamw_float32() -> None:
    _adamw_vs_stable(torch.float32, 150, {}, rtol=1e-5, atol=1e-6)


def test_folded_betas() -> None:
    assert folded_betas(0.9, 0.99, 1) == (0.0, 0.0)
    b1, b2 = folded_betas(0.9, 0.99, 7)
    assert 1 - b1 == pytest.approx((1 - 0.9) / (1 - 0.9**7))
    assert 1 - b2 == pytest.approx((1 - 0.99) / (1 - 0.99**7))
    with pytest.raises(ValueError, match="step"):
        folded_betas(0.9, 0.99, 0)


def _train(opt, params, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = (torch.randn(p.shape, generator=g) * 0.1 + p.detach()).to(p.dtype)
        opt.step()


@pytest.mark.parametrize(
    "dtype,state_dtype", [(torch.float32, None), (torch.bfloat16, torch.float32), (torch.bfloat16, None)]
)
def test_state_dict_round_trip_continues_identically(dtype, state_dtype) -> None:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s).to(dtype)) for s in SHAPES]
    opt = StableAdamW(params, **HYPER, state_dtype=state_dtype)
    _train(opt, params, 30, seed=1)
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    params2 = [torch.nn.Parameter(t.clone()) for t in ckpt["params"]]
    opt2 = StableAdamW(params2, lr=1.0, state_dtype=state_dtype)  # hyper-parameters come from the checkpoint
    opt2.load_state_dict(ckpt["opt"])
    want_sdt = state_dtype or dtype
    for p in params2:
        st = opt2.state[p]
        assert st["exp_avg"].dtype == want_sdt and st["exp_avg_sq"].dtype == want_sdt
        assert st["step"].device.type == "cpu" and st["step"].dtype == torch.float32
        assert st["rms"].dtype == torch.float32 and st["rms"].dim() == 0
    _train(opt, params, 30, seed=2)
    _train(opt2, params2, 30, seed=2)
    for a, b in zip(params, params2):
        assert torch.equal(a, b)
    for a, b in zip(params, params2):
        assert torch.equal(opt.state[a]["exp_avg_sq"], opt2.state[b]["exp_avg_sq"])


def test_state_layout_and_params_without_grad() -> None:
    a = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(torch.randn(5))
    opt = StableAdamW([a, b])
    a.grad = torch.randn(4, 3)
    opt.step()
    assert b not in opt.state
    st = opt.state[a]
    assert set(st) == {"step", "exp_avg", "exp_avg_sq", "rms"}
    assert st["step"].item() == 1.0 and st["step"].device.type == "cpu"
    assert st["rms"].shape == () and st["rms"].device == a.device
    # step 1: v = g², so RMS = sqrt(mean(g²/max(g², ε²))) = 1 for a gradient without zeros
    assert st["rms"].item() == pytest.approx(1.0, rel=1e-6)


def test_maximize_equals_minimizing_the_negated_gradient() -> None:
    torch.manual_seed(0)
    x0 = torch.randn(6, 5)
    a, b = torch.nn.Parameter(x0.clone()), torch.nn.Parameter(x0.clone())
    oa = StableAdamW([a], **HYPER, maximize=True)
    ob = StableAdamW([b], **HYPER)
    for t in range(20):
        g = torch.randn(6, 5) * (50.0 if t == 15 else 1.0)
        a.grad, b.grad = g.clone(), -g
        oa.step()
        ob.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_bf16_params_with_fp32_state_track_fp32_master() -> None:
    """bf16 params + fp32 moments: the moments match an fp32 run fed the same (bf16-rounded) data."""
    torch.manual_seed(0)
    x0 = torch.randn(64, 32).to(torch.bfloat16)
    p16 = torch.nn.Parameter(x0.clone())
    opt16 = StableAdamW([p16], **HYPER, state_dtype=torch.float32)
    p32 = torch.nn.Parameter(x0.float())
    opt32 = StableAdamW([p32], **HYPER)
    g = torch.randn(64, 32).to(torch.bfloat16)
    p16.grad, p32.grad = g.clone(), g.float()
    opt16.step()
    opt32.step()
    assert opt16.state[p16]["exp_avg"].dtype == torch.float32
    torch.testing.assert_close(opt16.state[p16]["exp_avg_sq"], opt32.state[p32]["exp_avg_sq"], rtol=0, atol=0)
    assert p16.dtype == torch.bfloat16
    torch.testing.assert_close(p16.float(), p32.detach().to(torch.bfloat16).float(), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(lr=-1e-3), ValueError, "learning rate"),
        (dict(lr=float("nan")), ValueError, "learning rate"),
        (dict(betas=(-0.1, 0.99)), ValueError, "index 0"),
        (dict(betas=(0.9, 1.0)), ValueError, "index 1"),
        (dict(betas=(0.9,)), ValueError, "pair"),
        (dict(eps=0.0), ValueError, "epsilon"),
        (dict(eps=-1e-8), ValueError, "epsilon"),
        (dict(weight_decay=-0.1), ValueError, "weight_decay"),
        (dict(lr=torch.tensor(1e-3)), TypeError, "lr"),
        (dict(foreach=True, fused=True), ValueError, "fused"),
        (dict(state_dtype=torch.int8), TypeError, "state_dtype"),
    ],
)
def test_bad_hyper_parameters(kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        StableAdamW([torch.nn.Parameter(torch.randn(3))], **kwargs)


def test_bad_param_group_is_rejected() -> None:
    opt = StableAdamW([torch.nn.Parameter(torch.randn(3))])
    with pytest.raises(ValueError, match="index 1"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], "betas": (0.9, 1.5)})
    with pytest.raises(TypeError, match="real floating-point"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))]})
    assert len(opt.param_groups) == 1  # nothing half-added


def test_unsupported_keywords_are_not_accepted() -> None:
    for kw in ("capturable", "differentiable", "amsgrad"):
        with pytest.raises(TypeError):
            StableAdamW([torch.nn.Parameter(torch.randn(3))], **{kw: True})


def test_sparse_gradients_are_rejected() -> None:
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = StableAdamW(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()


def test_complex_parameters_and_gradients_are_rejected() -> None:
    with pytest.raises(TypeError, match="real floating-point"):
        StableAdamW([torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))])
    p = torch.nn.Parameter(torch.randn(3))
    opt = StableAdamW([p])
    if hasattr(p, "grad_dtype"):
        p.grad_dtype = None  # torch >= 2.10 refuses a complex .grad on a real tensor unless told otherwise
    p.grad = torch.randn(3, dtype=torch.complex64)
    with pytest.raises(TypeError, match="complex"):
        opt.step()


def test_closure_is_evaluated_with_grad() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = StableAdamW([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss.detach()) == pytest.approx(5.0)
    assert torch.all(p.detach().abs() < torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("impl", [*IMPLS, "fused"])
def test_empty_parameter_is_harmless(impl: str, monkeypatch) -> None:
    if impl == "fused":
        from lowbit.optim import _fused

        if not _fused.interpreter_mode():
            pytest.skip("fused on CPU needs TRITON_INTERPRET=1")
        kwargs = dict(fused=True)
    else:
        kwargs, engine, host = IMPLS[impl]
        if engine is not None:
            _patched(monkeypatch, engine, host)
    empty = torch.nn.Parameter(torch.zeros(0, 3))
    full = torch.nn.Parameter(torch.ones(4))
    opt = StableAdamW([empty, full], **kwargs)
    empty.grad, full.grad = torch.zeros(0, 3), torch.full((4,), 0.5)
    opt.step()
    assert float(opt.state[empty]["rms"]) == 0.0 and float(opt.state[empty]["step"]) == 1.0
    assert float(opt.state[full]["rms"]) == pytest.approx(1.0)
    assert torch.all(full.detach() < 1.0)


@pytest.mark.parametrize("impl", ["foreach-host", "foreach-device", "cpu-engine"])
@pytest.mark.parametrize("state_dtype", [None, torch.float32])
def test_bf16_multi_tensor_matches_reference_over_many_steps(impl: str, state_dtype, monkeypatch) -> None:
    """bf16 params: the multi-tensor engines round m, v, θ once per step like the reference (fp32 math)."""
    kwargs, engine, host = IMPLS[impl]
    if engine == "cpu" and state_dtype is not None:
        pytest.skip("the cpu engine takes p, g, m, v of one dtype only (others go to foreach)")
    torch.manual_seed(0)
    base = [torch.randn(s).to(torch.bfloat16) for s in SHAPES]
    runs = {}
    for name in ("multi", "reference"):
        if name == "multi":
            _patched(monkeypatch, engine, host)
            kw = kwargs
        else:
            monkeypatch.setattr(sa, "_multi_tensor_stable_adamw", _MULTI)
            kw = dict(foreach=False)
        ps = [torch.nn.Parameter(b.clone()) for b in base]
        opt = StableAdamW(ps, **HYPER, **kw, state_dtype=state_dtype)
        gen = torch.Generator().manual_seed(3)
        for t in range(40):
            for p in ps:
                scale = 100.0 if t == 30 else 1.0
                p.grad = (torch.randn(p.shape, generator=gen) * scale + 0.3 * p.detach().float()).to(p.dtype)
            opt.step()
        runs[name] = (ps, opt)
    (pm, om), (pr, orf) = runs["multi"], runs["reference"]
    for a, b in zip(pm, pr):
        # one bf16 rounding of θ per step; fp32-rounding differences may flip it by one ulp now and then
        torch.testing.assert_close(a.float(), b.float(), rtol=1.6e-2, atol=1e-5)
        torch.testing.assert_close(om.state[a]["rms"], orf.state[b]["rms"], rtol=1e-4, atol=0)


def test_default_implementation_is_foreach_off_cuda(monkeypatch) -> None:
    """fused/foreach left at None: CPU tensors take the multi-tensor path (fused is the CUDA default)."""
    from lowbit.optim import _fused

    p = torch.nn.Parameter(torch.randn(5))
    assert not sa._default_fused([p], [p], [p])
    assert not _fused.fused_available([p])
    calls = []
    monkeypatch.setattr(sa, "_multi_tensor_stable_adamw", lambda *a, **k: calls.append("foreach"))
    opt = StableAdamW([p])
    p.grad = torch.randn(5)
    opt.step()
    assert calls == ["foreach"]
