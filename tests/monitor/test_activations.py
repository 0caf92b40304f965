"""ActivationMonitor: max |activation| per CLIP block, against a forward written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.models import CLIP, get_config
from lowbit.monitor import ActivationMonitor, find_blocks


def _model(**overrides) -> CLIP:
    torch.manual_seed(0)
    return CLIP(get_config("tiny", **overrides))


def _inputs(model: CLIP, b: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, 32, 32, generator=g) * 3
    tokens = torch.randint(1, 255, (b, 77), generator=g)
    tokens[:, 20] = model.text.eot_id
    return images, tokens


def _manual(model: CLIP, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, float]:
    """max |block output| per block, by stepping through the towers by hand (no hooks)."""
    out = {}
    v = model.visual
    x = v.patch_embed(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + v.positional_embedding
    x = v.ln_pre(x)
    for i, block in enumerate(v.blocks):
        x = block(x)
        out[f"visual.blocks.{i}"] = x.abs().max().item()
    t = model.text
    x = t.token_embedding(tokens) + t.positional_embedding[: tokens.shape[1]]
    for i, block in enumerate(t.blocks):
        x = block(x)
        out[f"text.blocks.{i}"] = x.abs().max().item()
    return out


def test_block_maxima_match_a_manual_forward_and_accumulate() -> None:
    model = _model()
    mon = ActivationMonitor(model)
    assert mon.names == [f"visual.blocks.{i}" for i in range(3)] + [f"text.blocks.{i}" for i in range(2)]
    a, b = _inputs(model, seed=1), _inputs(model, seed=2)
    with torch.no_grad():
        model(*a)
        got_a = mon.summary()
        model(*b)
        got_ab = mon.summary(reset=True)
        assert mon.summary() == {}  # reset clears
        ref_a, ref_b = _manual(model, *a), _manual(model, *b)
    assert got_a.keys() == ref_a.keys()
    for name in ref_a:
        assert got_a[name] == pytest.approx(ref_a[name], rel=1e-6)
        assert got_ab[name] == pytest.approx(max(ref_a[name], ref_b[name]), rel=1e-6)
    # blocks differ: a single global value copied everywhere would fail this
    assert len({round(v, 4) for v in got_a.values()}) > 1


def test_metrics_eval_mode_and_remove() -> None:
    model = _model()
    mon = ActivationMonitor(model)
    images, tokens = _inputs(model)
    model.eval()
    with torch.no_grad():
        model(images, tokens)
    assert mon.summary() == {}  # evaluation forwards are not recorded (train_only)
    model.train()
    model(images, tokens)
    m = mon.metrics()  # resets by default
    assert set(m) == {f"act/{n}" for n in mon.names} | {"act_max"}
    assert m["act_max"] == max(v for k, v in m.items() if k.startswith("act/"))
    assert mon.metrics() == {}
    mon.remove()
    model(images, tokens)
    assert mon.summary() == {}


def test_branches_with_zero_init_layer_scale_are_zero() -> None:
    # layer_scale_init 0.0: every residual branch is exactly zero at init, so each block passes its input on
    model = _model(layer_scale_init=0.0)
    mon = ActivationMonitor(model, branches=True)
    assert "visual.blocks.0.attn_branch" in mon.names and "text.blocks.1.mlp_branch" in mon.names
    images, tokens = _inputs(model)
    with torch.no_grad():
        model(images, tokens)
    s = mon.summary()
    assert all(v == 0.0 for n, v in s.items() if n.endswith("_branch"))
    assert s["visual.blocks.0"] == s["visual.blocks.2"] > 0  # the residual stream is unchanged by the blocks
    # without layer-scale the branches are not zero
    model = _model()
    mon = ActivationMonitor(model, branches=True)
    with torch.no_grad():
        model(images, tokens)
    assert mon.summary()["visual.blocks.0.mlp_branch"] > 0


def test_nan_shows_and_no_blocks_is_an_error() -> None:
    model = _model()
    mon = ActivationMonitor(model)
    images, tokens = _inputs(model)
    images[0, 0, 0, 0] = math.nan
    with torch.no_grad():
        model(images, tokens)
    s = mon.summary()
    assert math.isnan(s["visual.blocks.0"]) and not math.isnan(s["text.blocks.0"])
    assert math.isnan(mon.metrics()["act_max"])
    with pytest.raises(ValueError, match="no transformer blocks"):
        ActivationMonitor(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert [n for n, _ in find_blocks(model)][:1] == ["visual.blocks.0"]
