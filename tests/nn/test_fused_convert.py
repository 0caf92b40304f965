"""convert(fuse=True) on the MLP shapes of timm, Hugging Face, open_clip and plain PyTorch; the ConvertReport.

timm / transformers / open_clip cannot be installed here without a second torch, so minimal stand-ins with the
same class names, attribute names and forward are defined below.
"""

from __future__ import annotations

import io
import logging
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

import lowbit
from lowbit.nn import (
    ConvertReport,
    LayerNormLinear,
    LayerNormMLP,
    LowbitLinear,
    LowbitMLP,
    convert,
    convert_report,
    fuse_layernorm,
    match_activation,
    unconvert,
)


def every(fqn: str, module: nn.Module) -> bool:
    return True


# --------------------------------------------------------------------------------------------------- stand-ins

class Mlp(nn.Module):
    """timm.layers.Mlp."""

    def __init__(self, d: int, h: int, drop: float = 0.0, norm: bool = False) -> None:
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(d, h), nn.GELU(), nn.Dropout(drop)
        self.norm = nn.LayerNorm(h) if norm else nn.Identity()
        self.fc2, self.drop2 = nn.Linear(h, d), nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class GluMlp(Mlp):
    """timm's gated MLP: same attributes, different forward (must not be fused)."""

    def forward(self, x):
        a, b = self.fc1(x).chunk(2, -1)
        return self.fc2(a * self.act(b))


class QuickGELUActivation(nn.Module):
    """transformers.activations.QuickGELUActivation."""

    def forward(self, input):
        return input * torch.sigmoid(1.702 * input)


class NewGELUActivation(nn.Module):
    """transformers.activations.NewGELUActivation (tanh form written out)."""

    def forward(self, input):
        return 0.5 * input * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (input + 0.044715 * torch.pow(input, 3.0))))


class GELUActivation(nn.Module):
    """transformers.activations.GELUActivation (erf)."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.functional.gelu

    def forward(self, input):
        return self.act(input)


class CLIPMLP(nn.Module):
    """transformers CLIPMLP: config attribute, fc1, activation_fn, fc2."""

    def __init__(self, d: int, h: int, act: nn.Module) -> None:
        super().__init__()
        self.config = {"hidden_act": "quick_gelu"}
        self.activation_fn = act
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, hidden_states):
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class QuickGELU(nn.Module):
    """open_clip.transformer.QuickGELU."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


def open_clip_mlp(d: int, h: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict([("c_fc", nn.Linear(d, h)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(h, d))]))


class ViTIntermediate(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.dense, self.intermediate_act_fn = nn.Linear(d, h), GELUActivation()

    def forward(self, x):
        return self.intermediate_act_fn(self.dense(x))


class ViTOutput(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.dense, self.dropout = nn.Linear(h, d), nn.Dropout(0.0)

    def forward(self, x, res):
        return self.dropout(self.dense(x)) + res


class ViTLayer(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(d)
        self.intermediate, self.output = ViTIntermediate(d, h), ViTOutput(d, h)

    def forward(self, x):
        return self.output(self.intermediate(self.layernorm(x)), x)


class BertLike(nn.Module):
    """13 linears, hidden 256 (issue #21's BERT): 2 layers × (q, k, v, o, intermediate, output) + pooler."""

    def __init__(self, d: int = 256) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(2):
            layer = nn.Module()
            layer.query, layer.key, layer.value, layer.attn_out = (nn.Linear(d, d) for _ in range(4))
            layer.intermediate = ViTIntermediate(d, 4 * d)
            layer.output = ViTOutput(d, 4 * d)
            self.layers.append(layer)
        self.pooler = nn.Linear(d, d)


# ------------------------------------------------------------------------------------------------------ tests

def _check_fused(module: nn.Module, d: int, *, fc: tuple[str, str], activation: str, recipe: str = "switchback"):
    """convert fuses ``module``: same keys, same parameter objects, same numbers as the unfused conversion,
    unconvert gives the original object back."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, d)
    keys = list(module.state_dict())
    params = [id(p) for p in module.parameters()]
    ref = module(x)
    unfused = convert(_copy(module), recipe, every, fuse=False)
    fused = convert(module, recipe, every, fuse=True)
    assert isinstance(fused, LowbitMLP) and (fused.fc1_name, fused.fc2_name) == fc and fused.activation == activation
    assert list(fused.state_dict()) == keys and [id(p) for p in fused.parameters()] == params
    assert isinstance(fused.fc1, LowbitLinear) and fused.fc1.recipe.name == recipe
    y = fused(x)
    assert torch.equal(y, unfused(x))  # the same numbers as the per-linear conversion (float32, CPU)
    assert float((y - ref).norm() / ref.norm()) < 0.05
    back = unconvert(fused)
    assert back is module and all(type(m) is nn.Linear for m in back.modules() if isinstance(m, nn.Linear))
    assert torch.equal(back(x), ref)
    return fused


def _copy(module: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_sequential_linear_gelu_linear() -> None:
    _check_fused(nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 24)), 24, fc=("0", "2"),
                 activation="gelu")
    _check_fused(nn.Sequential(nn.Linear(24, 40), nn.GELU(approximate="tanh"), nn.Dropout(0.0), nn.Linear(40, 24)),
                 24, fc=("0", "3"), activation="gelu_tanh", recipe="fp8-rowwise-sim")


def test_timm_mlp() -> None:
    _check_fused(Mlp(24, 40), 24, fc=("fc1", "fc2"), activation="gelu")
    rep = ConvertReport()
    model = nn.Sequential(Mlp(24, 40, drop=0.1), Mlp(24, 48, norm=True), GluMlp(24, 40))
    convert(model, "switchback", every, report=rep, fuse=True)
    assert "dropout p=0.1" in rep.not_fused["0"] and "LayerNorm" in rep.not_fused["1"]
    assert "unknown MLP class" in rep.not_fused["2"]
    assert not rep.fused and all(isinstance(m, LowbitLinear) for m in (model[0].fc1, model[1].fc2, model[2].fc1))


def test_hugging_face_clip_mlp_and_activations() -> None:
    _check_fused(CLIPMLP(24, 40, QuickGELUActivation()), 24, fc=("fc1", "fc2"), activation="quick_gelu")
    _check_fused(CLIPMLP(24, 40, GELUActivation()), 24, fc=("fc1", "fc2"), activation="gelu")
    # NewGELU writes the tanh form out: matched as gelu_tanh (equal to F.gelu(tanh) at float32 rounding)
    m = convert(CLIPMLP(24, 40, NewGELUActivation()), "switchback", every, fuse=True)
    assert isinstance(m, LowbitMLP) and m.activation == "gelu_tanh"


def test_open_clip_mlp_keeps_c_fc_c_proj_keys() -> None:
    fused = _check_fused(open_clip_mlp(24, 40), 24, fc=("c_fc", "c_proj"), activation="quick_gelu")
    assert "c_fc → quick_gelu → c_proj" in repr(fused)


def test_nested_mlps_and_activation_matching() -> None:
    block = nn.Module()
    block.mlp = open_clip_mlp(24, 40)
    block.relu_mlp = nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 24))
    rep = ConvertReport()
    convert(block, "switchback", every, report=rep, fuse=True)
    assert isinstance(block.mlp, LowbitMLP) and "mlp" in rep.fused
    assert "ReLU" in rep.not_fused["relu_mlp"] and isinstance(block.relu_mlp[0], LowbitLinear)
    assert convert_report(block) is rep
    assert match_activation(nn.GELU())[0] == "gelu" and match_activation(nn.SiLU())[0] is None


def test_filter_rejecting_one_linear_leaves_the_mlp_unfused() -> None:
    m = nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 24))
    rep = ConvertReport()
    out = convert(m, "switchback", lambda fqn, mod: fqn == "0", report=rep, fuse=True)
    assert out is m and isinstance(m[0], LowbitLinear) and type(m[2]) is nn.Linear
    assert rep.not_fused[""] == "2: rejected by module_filter" and rep.skipped == {"2": "rejected by module_filter"}


def test_reconvert_changes_the_recipe_of_a_fused_mlp() -> None:
    m = convert(Mlp(24, 40), "switchback", every, fuse=True)
    assert convert(m, "fp8-switchback-sim", every, fuse=True) is m
    assert m.recipe.name == m.fc1.recipe.name == m.fc2.recipe.name == "fp8-switchback-sim"


def test_vit_split_mlp_is_reported_and_its_linears_converted() -> None:
    layer = ViTLayer(24, 40)
    rep = ConvertReport()
    convert(layer, "switchback", every, report=rep, fuse=True)
    assert "ViT/BERT split" in rep.not_fused["intermediate"]
    assert isinstance(layer.intermediate.dense, LowbitLinear) and isinstance(layer.output.dense, LowbitLinear)
    layer(torch.randn(2, 24))


def test_nothing_converted_warns_once_with_threshold_and_override(caplog) -> None:
    """Issue #21: a BERT at hidden 256 converts 0 of 13 linears; say so once, with the way out."""
    model = BertLike()
    with caplog.at_level(logging.INFO, logger="lowbit.nn.convert"):
        convert(model, fuse=True)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "0 of 13 linear layers" in msg and "1280" in msg and "module_filter=lambda fqn, m: True" in msg
    rep = convert_report(model)
    assert len(rep.skipped) == 13 and not rep.converted and "too small to gain" in rep.skipped["pooler"]
    assert "ViT/BERT split" in rep.not_fused["layers.0.intermediate"]
    assert "skipped pooler: too small to gain" in caplog.text  # each decision at INFO
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lowbit.nn.convert"):
        convert(BertLike(), module_filter=every, fuse=True)
    assert not caplog.records  # something converted: no warning


def test_lowbit_mlp_direct_construction_and_api() -> None:
    m = LowbitMLP(24, 40, activation="quick_gelu", recipe="switchback-m")
    assert list(m.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    x = torch.randn(2, 3, 24)
    assert m(x).shape == (2, 3, 24)
    plain = unconvert(m)
    assert isinstance(plain, nn.Sequential) and list(plain.state_dict()) == list(m.state_dict())
    with pytest.raises(ValueError, match="activation must be one of"):
        LowbitMLP(4, 8, activation="relu")
    with pytest.raises(ValueError, match="unknown recipe"):
        LowbitMLP(4, 8, recipe="int4")
    assert lowbit.nn.LowbitMLP is LowbitMLP


def test_layernorm_modules_direct_and_fused_keep_keys() -> None:
    torch.manual_seed(1)
    lnl = LayerNormLinear(24, 40, recipe="switchback")
    assert list(lnl.state_dict()) == ["weight", "bias", "norm.weight", "norm.bias"]
    x = torch.randn(2, 5, 24)
    ref = LowbitLinear.from_linear(lnl, "switchback")(lnl.norm(x))
    assert torch.equal(lnl(x), ref)
    lnm = LayerNormMLP(24, 40, recipe="fp8-switchback-sim")
    assert lnm(x).shape == x.shape and "norm.weight" in lnm.state_dict()
    # fuse_layernorm: a block's LayerNorm and its consumer, keys unchanged
    block = nn.Module()
    block.ln = nn.LayerNorm(24)
    block.mlp = Mlp(24, 40)
    block.ln_b, block.proj = nn.LayerNorm(24), nn.Linear(24, 16)
    keys = list(block.state_dict())
    want = (block.mlp(block.ln(x)), block.proj(block.ln_b(x)))
    convert(block, "switchback", every, fuse=True)
    unfused = (block.mlp(block.ln(x)), block.proj(block.ln_b(x)))
    assert fuse_layernorm(block, "ln", "mlp") is None and fuse_layernorm(block, "ln_b", "proj") is None
    assert isinstance(block.mlp, LayerNormMLP) and isinstance(block.proj, LayerNormLinear)
    assert list(block.state_dict()) == keys
    got = (block.mlp(block.ln(x)), block.proj(block.ln_b(x)))  # ln / ln_b are identity aliases now
    assert all(torch.equal(a, b) for a, b in zip(got, unfused))
    assert "LayerNormAlias" in fuse_layernorm(block, "ln", "mlp")  # fusing twice changes nothing
    unconvert(block)
    assert type(block.ln) is nn.LayerNorm and type(block.mlp) is Mlp and type(block.proj) is nn.Linear
    assert list(block.state_dict()) == keys
    assert all(torch.allclose(a, b) for a, b in zip((block.mlp(block.ln(x)), block.proj(block.ln_b(x))), want))
