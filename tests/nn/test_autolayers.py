"""``lowbit.nn.autolayers``: layers converted where their recipe measured faster than bf16, from fake timings on the
CPU (the decision, the margin, one measurement per shape, the JSON cache, a corrupt cache, the CPU fallback, the
CLIP / bench step wiring) and one real measurement on CUDA."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit.nn import GAIN_MARGIN, LowbitLinear, autolayers, convert, convert_report, measured_filter
from lowbit.nn.autolayers import CACHE_FILE, ShapeTimer

RECIPE = "switchback-sim"


class FakeTimer:
    """``measure(tokens, d_in, d_out, bias)``: gain ``gains[(d_in, d_out)]`` (bf16 1 ms), counting the calls."""

    def __init__(self, gains: dict[tuple[int, int], float]) -> None:
        self.gains = gains
        self.calls: list[tuple[int, int, int, bool]] = []

    def __call__(self, tokens: int, d_in: int, d_out: int, bias: bool) -> tuple[float, float, str]:
        self.calls.append((tokens, d_in, d_out, bias))
        return 1.0, 1.0 / self.gains[(d_in, d_out)], "fake graphs"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes its measurements under its own folder, never into ~/.cache."""
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))


def test_a_layer_that_gains_converts_and_one_that_loses_stays_16bit_with_the_measured_cause() -> None:
    fake = FakeTimer({(64, 128): 1.25, (128, 64): 0.93})
    model = convert(_mlp(), RECIPE, module_filter=measured_filter(RECIPE, tokens=32, device="cpu", measure=fake))
    assert isinstance(model[0], LowbitLinear) and type(model[2]) is nn.Linear
    rows = {r.layer: r for r in convert_report(model).layers}
    assert rows["0"].status == "converted" and "measured faster: 1.25× bf16 at 32×64→128 (fake graphs" in rows["0"].detail
    assert rows["2"].status == "16-bit" and rows["2"].cause == "measured slower"
    assert rows["2"].detail.startswith("measured slower: 0.93× bf16 at 32×128→64 (fake graphs, cpu)")
    # the measurement itself, not only its wording: the gain and the shape timed
    assert (rows["0"].gain, rows["0"].measured_at) == (pytest.approx(1.25), "32×64→128")
    assert (rows["2"].gain, rows["2"].measured_at) == (pytest.approx(0.93), "32×128→64")
    table = convert_report(model).table()
    assert "16-bit (measured slower)" in table and "0.93× bf16" in table and "1.25× bf16" in table
    assert fake.calls == [(32, 64, 128, True), (32, 128, 64, True)]


def test_the_margin_boundary() -> None:
    assert GAIN_MARGIN == 0.02
    lin = nn.Linear(64, 64)
    at = measured_filter(RECIPE, 8, "cpu", measure=lambda t, i, o, b: (1.02, 1.0, "fake"))
    below = measured_filter(RECIPE, 9, "cpu", measure=lambda t, i, o, b: (1.0199, 1.0, "fake"))
    assert at("x", lin) and at.reason("x", lin) is None and "1.02×" in at.note("x", lin)
    assert not below("x", lin) and "needs ≥ 1.02×" in (below.reason("x", lin) or "") and below.note("x", lin) == ""
    loose = measured_filter(RECIPE, 10, "cpu", margin=0.0, measure=lambda t, i, o, b: (1.0, 1.0, "fake"))
    assert loose("x", lin)
    with pytest.raises(ValueError, match="margin"):
        measured_filter(RECIPE, 8, "cpu", margin=-0.1)
    with pytest.raises(ValueError, match="tokens"):
        measured_filter(RECIPE, 0, "cpu")


def test_each_distinct_shape_is_measured_once() -> None:
    fake = FakeTimer({(64, 64): 1.5, (64, 128): 0.5})
    model = nn.Sequential(*(nn.Linear(64, 64) for _ in range(4)), nn.Linear(64, 128), nn.Linear(64, 128, bias=False))
    flt = measured_filter(RECIPE, tokens=16, device="cpu", measure=fake)
    model = convert(model, RECIPE, module_filter=flt)
    assert sum(isinstance(m, LowbitLinear) for m in model) == 4
    assert sorted(fake.calls) == [(16, 64, 64, True), (16, 64, 128, False), (16, 64, 128, True)]
    for m in model:  # asking again (the filter, its reason, its note) measures nothing new
        flt("x", m), flt.reason("x", m), flt.note("x", m)
    assert len(fake.calls) == 3 and flt.timer.measured == 3


def test_the_cache_round_trip_reads_instead_of_measuring(_cache: Path) -> None:
    first = FakeTimer({(64, 128): 1.25, (128, 64): 0.93})
    convert(_mlp(), RECIPE, module_filter=measured_filter(RECIPE, 32, "cpu", measure=first))
    data = json.loads((_cache / CACHE_FILE).read_text())
    assert data["version"] == 1 and len(data["entries"]) == 2
    key = next(k for k in data["entries"] if "32x64->128" in k)
    assert key.startswith("cpu|torch ") and "|triton " in key and "|lowbit " in key and f"|{RECIPE}|" in key
    assert data["entries"][key]["t_bf16_ms"] == 1.0 and data["entries"][key]["method"] == "fake graphs"
    second = FakeTimer({(64, 128): 9.0, (128, 64): 9.0})  # another process: a fresh object, other timings
    model = convert(_mlp(), RECIPE, module_filter=measured_filter(RECIPE, 32, "cpu", measure=second))
    assert second.calls == [] and isinstance(model[0], LowbitLinear) and type(model[2]) is nn.Linear
    other = FakeTimer({(64, 128): 1.25, (128, 64): 0.93})  # another recipe, or another token count: measured
    convert(_mlp(), "fp8-switchback-sim", module_filter=measured_filter("fp8-switchback-sim", 32, "cpu", measure=other))
    convert(_mlp(), RECIPE, module_filter=measured_filter(RECIPE, 48, "cpu", measure=other))
    assert len(other.calls) == 4
    assert len(json.loads((_cache / CACHE_FILE).read_text())["entries"]) == 6


@pytest.mark.parametrize("content", ["{not json", '{"version": 1}', "[]", '{"version": 1, "entries": {"k": 1}}'])
def test_a_corrupt_cache_warns_once_and_is_measured_again(
    _cache: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    _cache.mkdir(parents=True)
    (_cache / CACHE_FILE).write_text(content)
    fake = FakeTimer({(64, 128): 1.25})
    timer = ShapeTimer(RECIPE, "cpu", measure=fake)
    with caplog.at_level(logging.WARNING, logger="lowbit.nn.autolayers"):
        assert timer.get(32, 64, 128).gain == 1.25
    assert len(fake.calls) == 1
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    if content.startswith('{"version": 1, "entries"'):  # a valid file with a foreign key: nothing to warn about
        assert warnings == []
    else:
        assert len(warnings) == 1 and "corrupt" in warnings[0].getMessage(), warnings
    entries = json.loads((_cache / CACHE_FILE).read_text())["entries"]  # rewritten whole
    assert any("32x64->128" in k for k in entries)


def test_a_malformed_entry_is_measured_again(_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    timer = ShapeTimer(RECIPE, "cpu", measure=FakeTimer({(64, 128): 1.25}))
    _cache.mkdir(parents=True)
    key = timer.key(32, 64, 128, True)
    (_cache / CACHE_FILE).write_text(json.dumps({"version": 1, "entries": {key: {"t_bf16_ms": "x"}}}))
    with caplog.at_level(logging.WARNING, logger="lowbit.nn.autolayers"):
        assert timer.get(32, 64, 128).gain == 1.25
    assert timer.measured == 1 and any("malformed" in r.getMessage() for r in caplog.records)


def test_an_unwritable_cache_warns_and_keeps_measurements_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    fake = FakeTimer({(64, 128): 1.25, (128, 64): 0.93})
    with caplog.at_level(logging.WARNING, logger="lowbit.nn.autolayers"):
        model = convert(_mlp(), RECIPE,
                        module_filter=measured_filter(RECIPE, 32, "cpu", measure=fake, cache_dir=blocker / "sub"))
    assert isinstance(model[0], LowbitLinear) and len(fake.calls) == 2
    assert sum("cannot write" in r.getMessage() for r in caplog.records) == 1


def test_without_cuda_the_width_threshold_decides_and_says_not_measured() -> None:
    model = nn.Sequential(nn.Linear(1280, 5120), nn.GELU(), nn.Linear(5120, 1024))
    model = convert(model, RECIPE, module_filter=measured_filter(RECIPE, tokens=1000, device="cpu"))
    assert isinstance(model[0], LowbitLinear) and type(model[2]) is nn.Linear
    rows = {r.layer: r for r in convert_report(model).layers}
    assert "not measured (cpu): width threshold" in rows["0"].detail
    assert rows["2"].cause == "not measured"
    assert rows["2"].detail.startswith("not measured (cpu): width threshold: too small to gain (5120→1024")
    if not torch.cuda.is_available():
        flt = measured_filter(RECIPE, tokens=1000, device="cuda")
        assert (flt.reason("x", nn.Linear(64, 64)) or "").startswith("not measured (no CUDA)")
    flt = measured_filter("bf16", tokens=1000, device="cpu", measure=FakeTimer({}))
    assert "recipe bf16 does not quantize" in (flt.reason("x", nn.Linear(64, 64)) or "")
    flt = measured_filter(RECIPE, tokens=lambda fqn: None, device="cpu", measure=FakeTimer({}))
    assert "not measured (no token count)" in (flt.reason("x", nn.Linear(64, 64)) or "")


def test_misaligned_layers_stay_16bit_without_measuring() -> None:
    fake = FakeTimer({})
    flt = measured_filter(RECIPE, 8, "cpu", measure=fake)
    assert not flt("x", nn.Linear(60, 64)) and "multiples of 16" in (flt.reason("x", nn.Linear(60, 64)) or "")
    assert fake.calls == []


def test_a_failed_measurement_keeps_the_shape_16bit_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def oom(tokens: int, d_in: int, d_out: int, bias: bool) -> tuple[float, float, str]:
        calls.append(d_in)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore text")

    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    with caplog.at_level(logging.WARNING, logger="lowbit.nn.autolayers"):
        model = convert(model, RECIPE, module_filter=measured_filter(RECIPE, 8, "cpu", measure=oom))
    assert all(type(m) is nn.Linear for m in model) and calls == [64]  # not retried for the second layer
    row = convert_report(model).layers[0]
    assert row.cause == "measurement failed" and "OutOfMemoryError: CUDA out of memory." in row.detail
    assert sum("failed" in r.getMessage() for r in caplog.records) == 1


def test_ranks_take_rank_0s_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    def broadcast(t: torch.Tensor, src: int) -> None:
        t.copy_(torch.tensor([1.0, 2.0], dtype=t.dtype))  # rank 0 measured 0.5×

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(dist, "broadcast", broadcast)
    mine = measured_filter(RECIPE, 8, "cpu", measure=FakeTimer({(64, 64): 1.5}), ranks_agree=True)
    assert not mine("x", nn.Linear(64, 64)) and "0.50× bf16" in (mine.reason("x", nn.Linear(64, 64)) or "")
    alone = measured_filter(RECIPE, 8, "cpu", measure=FakeTimer({(64, 64): 1.5}))  # the cache holds its own 1.5×
    assert alone("x", nn.Linear(64, 64))


def test_clip_auto_measures_each_tower_at_its_own_token_count() -> None:
    from lowbit.models import CLIP, get_config
    from lowbit.models.convert import clip_tokens, make_clip_module_filter

    assert clip_tokens(get_config("vit-h-14"), 96) == {"visual": 96 * (16 * 16 + 1), "text": 96 * 77}
    model = CLIP(get_config("tiny"))
    tokens = clip_tokens(model.config, 4)
    fake = FakeTimer({(128, 384): 1.3, (128, 128): 0.9, (128, 512): 1.3, (512, 128): 1.3,
                      (64, 192): 1.3, (64, 64): 1.3, (64, 256): 0.8, (256, 64): 1.3})
    flt = make_clip_module_filter(layers="auto", recipe=RECIPE, device="cpu", tokens=tokens, measure=fake)
    model = convert(model, RECIPE, module_filter=flt)
    assert {c[0] for c in fake.calls if c[1] == 128 or c[2] == 128} == {tokens["visual"]}
    assert {c[0] for c in fake.calls if c[1] == 64 or c[2] == 64} == {tokens["text"]}
    assert len(fake.calls) == 8  # 4 shapes per tower, each once whatever the depth
    rows = {r.layer: r for r in convert_report(model).layers}
    assert rows["visual.blocks.0.attn.out"].cause == "measured slower"
    assert rows["text.blocks.0.mlp.fc"].cause == "measured slower"
    assert rows["visual.blocks.0.mlp.fc"].status == "converted"
    assert rows["visual.proj"].detail == "rejected by module_filter"  # the CLIP rules come first, unmeasured


def test_bench_step_auto_measures_at_the_rows_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench step --layers auto`` converts through the same measured path (here: a fake measurement, as if
    the CPU could measure)."""
    from lowbit.bench import step as bench_step

    seen: list[int] = []

    def fake(recipe: object, device: object, tokens: int, d_in: int, d_out: int, bias: bool = True):
        seen.append(tokens)
        return 1.0, 0.5, "fake graphs"

    monkeypatch.setattr(ShapeTimer, "can_measure", property(lambda self: None))
    monkeypatch.setattr(autolayers, "measure_linear", fake)
    _, conv = bench_step.build_model("tiny", RECIPE, torch.device("cpu"), layers="auto", batch=3)
    assert conv == "20/22" and set(seen) == {3 * (4 * 4 + 1), 3 * 77}
    _, conv = bench_step.build_model("tiny", RECIPE, torch.device("cpu"), layers="auto")  # no batch: threshold
    assert conv == "0/22"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the GPU host)")
def test_a_vit_h_mlp_shape_is_measured_on_cuda(_cache: Path) -> None:
    timer = ShapeTimer("switchback", "cuda")
    m = timer.get(96 * 257, 1280, 5120)
    assert math.isfinite(m.gain) and m.gain > 0 and m.t_bf16_ms > 0 and m.t_recipe_ms > 0, m
    assert m.method and m.device == torch.cuda.get_device_name()
    assert (_cache / CACHE_FILE).exists() and timer.measured == 1
    assert ShapeTimer("switchback", "cuda").get(96 * 257, 1280, 5120) == m  # read back, not measured again
    print(f"switchback at 24672x1280->5120: {m.gain:.3f}x bf16 ({m.method}, {m.device})")


class _TwoTowers(nn.Module):
    """A linear per token, one on a pooled vector, one called twice, one never called, and an attention module."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.tok, self.pool, self.twice, self.unused = (nn.Linear(16, 16), nn.Linear(16, 32), nn.Linear(16, 16),
                                                        nn.Linear(16, 16))
        self.attn = nn.MultiheadAttention(16, 2, batch_first=batch_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [batch, seq, 16]
        h = self.tok(x)
        q = h if self.attn.batch_first else h.transpose(0, 1)
        h = self.attn(q, q, q, need_weights=False)[0]
        h = h if self.attn.batch_first else h.transpose(0, 1)
        return self.pool(self.twice(self.twice(h).mean(1)))


@pytest.mark.parametrize("batch_first", [True, False])
def test_linear_tokens_counts_each_linears_rows_in_one_forward(batch_first: bool) -> None:
    m = _TwoTowers(batch_first)
    x = torch.randn(3, 5, 16)
    rows = autolayers.linear_tokens(m, lambda: m(x))
    # per token 3 × 5; the attention's projections: the query's rows; "twice": the larger of its two calls (15, 3)
    assert rows == {"tok": 15, "attn.in_proj": 15, "attn.out_proj": 15, "twice": 15, "pool": 3}
    assert not any(m._forward_pre_hooks for m in m.modules())  # the hooks are gone
    assert torch.is_grad_enabled()


def test_linear_tokens_drive_the_measured_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """``measured_filter(recipe, tokens=linear_tokens(...).get)``: each layer timed at its own rows; a layer the
    forward never called falls back to the width threshold ("no token count")."""
    monkeypatch.setattr(ShapeTimer, "can_measure", property(lambda self: None))
    seen: list[tuple[int, int, int]] = []

    def fake(recipe: object, device: object, tokens: int, d_in: int, d_out: int, bias: bool = True):
        seen.append((tokens, d_in, d_out))
        return 1.0, 0.5 if d_out != 32 else 2.0, "fake graphs"  # every layer gains 2× but the pooled head

    monkeypatch.setattr(autolayers, "measure_linear", fake)
    m = _TwoTowers(True)
    x = torch.randn(3, 5, 16)
    rows = autolayers.linear_tokens(m, lambda: m(x))
    convert(m, RECIPE, module_filter=measured_filter(RECIPE, rows.get, "cpu"))
    report = {r.layer: r for r in convert_report(m).layers}
    assert report["tok"].status == "converted" and report["tok"].measured_at == "15×16→16"
    assert report["pool"].cause == "measured slower" and report["pool"].measured_at == "3×16→32"
    assert report["unused"].status == "16-bit" and "not measured (no token count)" in report["unused"].detail
    assert report["attn.in_proj"].status == "converted" and report["attn.in_proj"].measured_at == "15×16→48"
    assert sorted(seen) == [(3, 16, 32), (15, 16, 16), (15, 16, 48)]  # one measurement per shape
