"""LowbitLinear and convert()/unconvert() on a small transformer."""

from __future__ import annotations

import io
import logging

import pytest
import torch
from torch import nn

import lowbit
from lowbit.nn import LowbitLinear, SwitchBackLinear, convert, skip_reason, unconvert


class Block(nn.Module):
    """A pre-LN transformer block with its own attention linears (so convert can reach them)."""

    def __init__(self, d: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D)
        x = x + self.out(a)
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


def _model(d: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Block(d), Block(d), nn.LayerNorm(d), nn.Linear(d, 10))


def _everything(fqn: str, module: nn.Linear) -> bool:
    return True


def test_convert_swaps_in_place_shares_params_and_stays_close() -> None:
    model = _model()
    x = torch.randn(2, 9, 64)
    ref = model(x).detach()
    params_before = {id(p) for p in model.parameters()}
    out_model = convert(model, "switchback", module_filter=_everything)
    assert out_model is model
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(m, LowbitLinear) for m in linears)
    assert {id(p) for p in model.parameters()} == params_before  # no copies: optimizer state stays valid
    got = model(x)
    rel = float((got - ref).norm() / ref.norm())
    assert 0 < rel < 0.03  # quantized, but close
    got.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_state_dict_round_trip_between_converted_and_plain() -> None:
    plain = _model()
    converted = convert(_model(), "switchback-q", module_filter=_everything)
    assert list(plain.state_dict()) == list(converted.state_dict())
    buf = io.BytesIO()
    torch.save(converted.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)  # plain tensors only
    fresh = _model()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    fresh.load_state_dict(sd)
    x = torch.randn(2, 5, 64)
    assert torch.equal(fresh(x), plain(x))


def test_unconvert_restores_plain_linears_and_outputs() -> None:
    model = _model()
    x = torch.randn(2, 5, 64)
    ref = model(x)
    unconvert(convert(model, "switchback", module_filter=_everything))
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    assert torch.equal(model(x), ref)


def test_filter_and_default_skips_are_reported(caplog) -> None:
    model = _model()
    with caplog.at_level(logging.INFO, logger="lowbit.nn.convert"):
        convert(model, "switchback", module_filter=lambda fqn, m: "fc" in fqn)
    kinds = {fqn: type(m) for fqn, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert kinds["0.fc1"] is LowbitLinear and kinds["1.fc2"] is LowbitLinear
    assert kinds["0.qkv"] is nn.Linear and kinds["3"] is nn.Linear
    assert "4 linear layer(s) → switchback; 5 skipped" in caplog.text
    # the default filter skips narrow layers and says why
    small = nn.Sequential(nn.Linear(64, 10))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lowbit.nn.convert"):
        convert(small)
    assert type(small[0]) is nn.Linear and "too small to gain" in caplog.text
    assert skip_reason("x", nn.Linear(1280, 5120)) is None
    assert "too small" in skip_reason("x", nn.Linear(1024, 4096))
    assert "multiples of 16" in skip_reason("x", nn.Linear(1288 + 4, 5120))
    mha = nn.MultiheadAttention(1280, 8)
    assert "MultiheadAttention" in skip_reason("out_proj", mha.out_proj)


def test_reconvert_changes_recipe_and_bare_linear() -> None:
    model = convert(_model(), "switchback", module_filter=_everything)
    convert(model, "fp8-switchback-sim", module_filter=_everything)
    assert {m.recipe.name for m in model.modules() if isinstance(m, LowbitLinear)} == {"fp8-switchback-sim"}
    bare = convert(nn.Linear(32, 32), "switchback", module_filter=_everything)
    assert isinstance(bare, LowbitLinear)


def test_lowbit_linear_api() -> None:
    layer = lowbit.LowbitLinear(32, 16, bias=False, recipe="switchback-m")
    assert layer.bias is None and layer.recipe.name == "switchback-m"
    assert "recipe='switchback-m'" in repr(layer)
    assert list(layer.state_dict()) == list(nn.Linear(32, 16, bias=False).state_dict())
    sb = SwitchBackLinear(32, 16, dtype=torch.float64)
    assert sb.recipe.name == "switchback" and sb.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="unknown recipe"):
        LowbitLinear(4, 4, recipe="nope")


def test_report_rows_and_table_name_the_cause_of_every_16_bit_layer() -> None:
    model = nn.ModuleDict({"wide": nn.Linear(1280, 5120), "narrow": nn.Linear(64, 64),
                           "odd": nn.Linear(1288 + 4, 5120), "head": nn.Linear(1280, 1280)})
    convert(model, "switchback-sim", lambda fqn, m: fqn != "head" and skip_reason(fqn, m) is None)
    rep = lowbit.convert_report(model)
    rows = {r["layer"]: r for r in rep.rows()}
    assert [r["layer"] for r in rep.rows()] == ["wide", "narrow", "odd", "head"]  # model order
    assert rows["wide"] == {"layer": "wide", "kind": "Linear", "shape": "1280→5120", "status": "converted",
                            "cause": "", "detail": "LowbitLinear", "gain": None, "measured_at": ""}
    assert {k: rows[k]["cause"] for k in ("narrow", "odd", "head")} == {
        "narrow": "module_filter", "odd": "module_filter", "head": "module_filter"}  # a filter's own reasons
    convert(model, "switchback-sim")  # the default filter says why
    rows = {r["layer"]: r for r in lowbit.convert_report(model).rows()}
    assert (rows["narrow"]["cause"], rows["odd"]["cause"], rows["head"]["status"]) == ("too small", "alignment",
                                                                                       "converted")
    assert "torch.compile" in rows["narrow"]["detail"]  # the way around eager launch costs
    table = lowbit.convert_report(model).table()
    lines = table.splitlines()
    assert lines[0] == lowbit.convert_report(model).summary() and "(too small: 1, alignment: 1)" in lines[0]
    assert lines[1].split() == ["layer", "kind", "shape", "status", "why", "/", "what"]
    assert any(line.startswith("odd ") and "16-bit (alignment)" in line for line in lines)
    assert all(len(line) <= 80 for line in lowbit.convert_report(model).table(width=10).splitlines()[2:])


def test_table_notes_the_launches_a_conversion_adds() -> None:
    """Issue #29: where launch costs can bound a step, the report says so and points to CUDA graphs; nothing
    converted, no note."""
    model = nn.Sequential(nn.Linear(1280, 1280), nn.Linear(1280, 1280))
    convert(model, "switchback-sim")
    report = lowbit.convert_report(model)
    assert "2 8-bit layer(s) issue about 14 more kernel launches" in report.launch_note()
    table = report.table()
    assert 'mode="reduce-overhead"' in table.replace("\n", " ") and all(len(line) <= 80 for line in
                                                                        table.splitlines()[-4:])
    plain = nn.Sequential(nn.Linear(16, 16))
    convert(plain, "switchback-sim")
    assert lowbit.convert_report(plain).launch_note() == "" and "kernel launches" not in \
        lowbit.convert_report(plain).table()
