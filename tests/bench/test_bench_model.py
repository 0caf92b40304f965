"""``lowbit bench model``: a third-party model's training step per recipe. timm and transformers are not installed
in CI (they would pull a CUDA torch): the tests register tiny stand-ins under their names in ``sys.modules`` that
offer the few calls the benchmark makes (``timm.create_model``; ``transformers.AutoConfig.for_model``, config
classes with sub-configs, ``AutoModel.from_config`` giving a CLIP-like model). ``test_bench_model_real.py`` runs
the same paths on the real packages where they are importable."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit.bench import model as bench_model
from lowbit.cli.main import main


# ---- a tiny timm --------------------------------------------------------------------------------------------
class Mlp(nn.Module):  # timm.layers.Mlp's children and forward
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(d, hidden), nn.GELU(), nn.Dropout(0.0)
        self.norm, self.fc2, self.drop2 = nn.Identity(), nn.Linear(hidden, d), nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class Block(nn.Module):
    def __init__(self, d: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.norm2, self.mlp = nn.LayerNorm(d), Mlp(d, 4 * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(a)
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, num_classes: int = 10, embed_dim: int = 32, depth: int = 2, img_size: int = 16) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pretrained_cfg = {"input_size": (3, img_size, img_size)}
        self.patch_embed = nn.Conv2d(3, embed_dim, 8, 8)
        self.blocks = nn.Sequential(*[Block(embed_dim) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(embed_dim), nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(x)).mean(1))


@pytest.fixture
def fake_timm(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    calls: list[tuple[str, dict]] = []

    def create_model(name: str, pretrained: bool = True, **kw: object) -> nn.Module:
        calls.append((name, {"pretrained": pretrained, **kw}))
        return TinyViT(**kw)  # type: ignore[arg-type]

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model, __name__="timm"))
    return calls


# ---- a tiny transformers ------------------------------------------------------------------------------------
class _Config:
    model_type = ""

    def __init__(self, **kw: object) -> None:
        for k, v in kw.items():
            setattr(self, k, v)

    def to_dict(self) -> dict:
        return dict(vars(self))


class CLIPTextConfig(_Config):
    def __init__(self, hidden_size: int = 32, intermediate_size: int = 64, vocab_size: int = 50,
                 max_position_embeddings: int = 8) -> None:
        super().__init__(hidden_size=hidden_size, intermediate_size=intermediate_size, vocab_size=vocab_size,
                         max_position_embeddings=max_position_embeddings)


class CLIPVisionConfig(_Config):
    def __init__(self, hidden_size: int = 32, intermediate_size: int = 64, image_size: int = 16,
                 patch_size: int = 8, num_channels: int = 3) -> None:
        super().__init__(hidden_size=hidden_size, intermediate_size=intermediate_size, image_size=image_size,
                         patch_size=patch_size, num_channels=num_channels)


class CLIPConfig(_Config):
    model_type = "clip"

    def __init__(self, text_config: dict | None = None, vision_config: dict | None = None, projection_dim: int = 16) -> None:
        super().__init__(text_config=CLIPTextConfig(**(text_config or {})),
                         vision_config=CLIPVisionConfig(**(vision_config or {})), projection_dim=projection_dim)


class CLIPMLP(nn.Module):  # Hugging Face's: fc1, activation_fn, fc2
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.activation_fn, self.fc2 = nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))


class CLIPModel(nn.Module):
    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        v, t = config.vision_config, config.text_config
        self.patch = nn.Linear(3 * v.patch_size**2, v.hidden_size)
        self.patch_size = v.patch_size
        self.vision_layers = nn.ModuleList([CLIPMLP(v.hidden_size, v.intermediate_size) for _ in range(2)])
        self.embed = nn.Embedding(t.vocab_size, t.hidden_size)
        self.text_layers = nn.ModuleList([CLIPMLP(t.hidden_size, t.intermediate_size) for _ in range(2)])
        self.visual_projection = nn.Linear(v.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(t.hidden_size, config.projection_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, return_loss: bool = False) -> object:
        p = self.patch_size
        x = nn.functional.unfold(pixel_values, p, stride=p).transpose(1, 2)
        x = self.patch(x)
        for layer in self.vision_layers:
            x = x + layer(x)
        y = self.embed(input_ids)
        for layer in self.text_layers:
            y = y + layer(y)
        img = nn.functional.normalize(self.visual_projection(x.mean(1)), dim=-1)
        txt = nn.functional.normalize(self.text_projection(y.mean(1)), dim=-1)
        logits = 10 * img @ txt.t()
        labels = torch.arange(len(logits), device=logits.device)
        loss = (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.t(), labels)) / 2
        return types.SimpleNamespace(loss=loss if return_loss else None, logits_per_image=logits)


@pytest.fixture
def fake_transformers(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    configs = {"clip": CLIPConfig}

    def for_model(model_type: str, **kw: object) -> _Config:
        if model_type not in configs:
            raise ValueError(f"Unrecognized model identifier: {model_type}")
        return configs[model_type](**kw)

    mod = types.SimpleNamespace(__name__="transformers", AutoConfig=types.SimpleNamespace(for_model=for_model),
                                CLIPConfig=CLIPConfig, AutoModel=types.SimpleNamespace(from_config=CLIPModel))
    monkeypatch.setitem(sys.modules, "transformers", mod)
    return mod


def _bench(tmp_path: Path, spec: str, *recipes: str, extra: tuple[str, ...] = ()) -> dict:
    rc = main(["bench", "model", "--model", spec, "--recipe", *recipes, "--batch-size", "4", "--steps", "2",
               "--warmup", "1", "--device", "cpu", "--no-anchors", "--out", str(tmp_path), *extra])
    assert rc == 0
    return json.loads((tmp_path / "model.json").read_text())


# ---- the spec ------------------------------------------------------------------------------------------------
def test_spec_parser() -> None:
    s = bench_model.parse_spec("timm:vit_huge_patch14_224")
    assert (s.source, s.name, s.options) == ("timm", "vit_huge_patch14_224", {})
    s = bench_model.parse_spec("hf:clip:vision.hidden_size=1280, text.hidden_size=1024,projection_dim=1024,"
                               "hidden_act=quick_gelu,layer_norm_eps=1e-05,tie=true,x=none")
    assert (s.source, s.name) == ("hf", "clip")
    assert s.options == {"vision.hidden_size": 1280, "text.hidden_size": 1024, "projection_dim": 1024,
                         "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "tie": True, "x": None}
    assert str(bench_model.parse_spec("hf:CLIPConfig:projection_dim=8")) == "hf:CLIPConfig:projection_dim=8"
    for bad, words in [("vit_huge", "expected timm:"), ("torchvision:vit_b_16", "expected timm:"),
                       ("timm:", "no model name"), ("hf:clip:hidden_size", "not key=value"),
                       ("hf:clip:=3", "not key=value")]:
        with pytest.raises(ValueError, match=words):
            bench_model.parse_spec(bad)


# ---- missing packages ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "package"), [("timm:vit_huge_patch14_224", "timm"), ("hf:clip", "transformers")])
def test_missing_package_is_one_error_line(spec: str, package: str, tmp_path: Path, capsys,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # import of it raises ModuleNotFoundError, installed or not
    rc = main(["bench", "model", "--model", spec, "--device", "cpu", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [f"lowbit bench: error: --model {spec} needs the {package} package, which is not installed: "
                   f"pip install {package}"]  # one line, before the CPU warning, nothing run or written
    assert not list(tmp_path.iterdir())


# ---- timm end to end -----------------------------------------------------------------------------------------
def test_timm_model_bf16_vs_a_sim_recipe_end_to_end(fake_timm, tmp_path: Path, capsys) -> None:
    data = _bench(tmp_path, "timm:vit_tiny:num_classes=7", "fp8-switchback-sim", extra=("--layers", "all", "--fuse"))
    assert fake_timm[0] == ("vit_tiny", {"pretrained": False, "num_classes": 7})
    rows = {r["recipe"]: r for r in data["rows"]}
    assert list(rows) == ["bf16", "fp8-switchback-sim"]  # the baseline is added, first
    for r in rows.values():
        assert "error" not in r, r
        assert r["batch"] == 4 and r["unit"] == "images/s" and r["compiled"] == "no"
        assert r["throughput"] == pytest.approx(4 / r["ms_per_step"] * 1000)
        assert r["loss"] > 0 and r["precision"] == "fp32"
    assert rows["bf16"]["vs_bf16"] == pytest.approx(1.0) and rows["bf16"]["converted"] == "0/9"
    sim = rows["fp8-switchback-sim"]
    assert sim["vs_bf16"] == pytest.approx(sim["throughput"] / rows["bf16"]["throughput"])
    # 2 blocks x (qkv, proj, fc1, fc2) + head: every linear (--layers all); each block's Mlp fused (--fuse)
    assert sim["converted"] == "9/9" and sim["fused"] == 2
    # model FLOPs (FlopCounterMode on the model as built, x3 for the backward): per block qkv 24576 + proj 8192 +
    # MLP 65536 + attention 2048; patch embedding 49152; head 448 -> 3 x 250304 per image, the same for each row
    for r in rows.values():
        assert r["flops_per_sample"] == 3 * 250304
        assert r["tflops"] == pytest.approx(3 * 250304 * r["throughput"] / 1e12) and r["mfu"] is None  # CPU
    md = (tmp_path / "model.md").read_text()
    assert md.startswith("## lowbit bench model") and "| timm:vit_tiny:num_classes=7 | fp8-switchback-sim | 4 |" in md
    assert "| timm:vit_tiny:num_classes=7 | fp8-switchback-sim |" in capsys.readouterr().out


def test_timm_default_filter_leaves_narrow_linears_and_trains(fake_timm) -> None:
    w = bench_model.build_workload(bench_model.parse_spec("timm:vit_tiny"))
    model, conv, fused = bench_model.convert_model(w.model, "switchback-sim", "auto", fuse=False)
    assert (conv, fused) == ("0/9", 0)  # 32/64-wide: below convert's threshold
    model, conv, fused = bench_model.convert_model(model, "switchback-sim", "all", fuse=False)
    assert (conv, fused) == ("9/9", 0)
    batch = w.batch(3, torch.device("cpu"))
    assert batch["x"].shape == (3, 3, 16, 16) and batch["labels"].shape == (3,)
    before = model.blocks[0].mlp.fc1.weight.detach().clone()
    w.loss(model, batch).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(before, model.blocks[0].mlp.fc1.weight)
    assert [type(b).__name__ for b in bench_model.repeated_blocks(model)] == ["Block", "Block"]


def test_timm_input_size_prefers_the_patch_embedding() -> None:
    # timm's img_size= / in_chans= options reach the patch embedding, not pretrained_cfg
    model = TinyViT(img_size=16)
    assert bench_model.timm_input_size(model) == (3, 16, 16)  # no img_size on a plain Conv2d: pretrained_cfg
    model.patch_embed.img_size, model.in_chans = (24, 32), 1
    assert bench_model.timm_input_size(model) == (1, 24, 32)
    model.patch_embed.img_size, model.pretrained_cfg = 40, {}
    assert bench_model.timm_input_size(model) == (1, 40, 40)


def test_fused_and_per_linear_rows_in_one_run(fake_timm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    real = bench_model.build_workload
    monkeypatch.setattr(bench_model, "build_workload", lambda *a, **k: built.append("x") or real(*a, **k))
    data = _bench(tmp_path, "timm:vit_tiny", "switchback-sim:per-linear", "switchback-sim:fused",
                  extra=("--layers", "all", "--fuse"))
    rows = {r["recipe"]: r for r in data["rows"]}
    assert list(rows) == ["bf16", "switchback-sim:per-linear", "switchback-sim:fused"]
    assert rows["switchback-sim:per-linear"]["fused"] == 0 and rows["switchback-sim:fused"]["fused"] == 2
    assert all(r["converted"] == "9/9" for r in list(rows.values())[1:]) and rows["bf16"]["converted"] == "0/9"
    assert built == ["x"]  # built once, copied for each row
    assert bench_model.split_recipe("fp8-switchback", True) == ("fp8-switchback", True)
    with pytest.raises(ValueError, match="must be one of fused, per-linear"):
        bench_model.split_recipe("switchback:fast", False)


def test_failing_row_is_recorded_and_the_others_run(fake_timm, tmp_path: Path) -> None:
    data = _bench(tmp_path, "timm:vit_tiny", "bf16", "no-such-recipe", "switchback-sim", extra=("--layers", "all"))
    rows = data["rows"]
    assert [r["recipe"] for r in rows] == ["bf16", "no-such-recipe", "switchback-sim"]
    assert "no-such-recipe" in rows[1]["error"] and "throughput" not in rows[1]
    assert rows[2]["converted"] == "9/9" and rows[2]["vs_bf16"] > 0


def test_compile_whole_or_per_block(fake_timm, tmp_path: Path) -> None:
    data = _bench(tmp_path, "timm:vit_tiny", "bf16", extra=("--compile",))
    assert data["rows"][0]["compiled"] == "blocks (2)" and "error" not in data["rows"][0]
    assert main(["bench", "model", "--model", "timm:vit_tiny", "--cudagraphs", "--device", "cpu"]) == 2


# ---- Hugging Face end to end ---------------------------------------------------------------------------------
def test_hf_clip_from_its_config_end_to_end(fake_transformers, tmp_path: Path) -> None:
    spec = "hf:clip:vision.hidden_size=48,intermediate_size=96,projection_dim=8"
    data = _bench(tmp_path, spec, "bf16", "switchback-sim", extra=("--layers", "all", "--fuse"))
    rows = {r["recipe"]: r for r in data["rows"]}
    for r in rows.values():
        assert "error" not in r, r
        assert r["unit"] == "images/s" and r["loss"] > 0
    # patch, 2 x 2 vision MLP linears, 2 x 2 text MLP linears, 2 projections; the 4 CLIPMLPs fused
    assert rows["switchback-sim"]["converted"] == "11/11" and rows["switchback-sim"]["fused"] == 4


def test_hf_config_options_reach_the_right_config(fake_transformers) -> None:
    cfg = bench_model.hf_config(fake_transformers, bench_model.parse_spec(
        "hf:clip:vision.hidden_size=48,intermediate_size=96,projection_dim=8"))
    assert cfg.vision_config.hidden_size == 48 and cfg.text_config.hidden_size == 32  # prefixed: one tower
    assert cfg.vision_config.intermediate_size == cfg.text_config.intermediate_size == 96  # only sub-configs: both
    assert cfg.projection_dim == 8  # the top-level config's own
    cfg = bench_model.hf_config(fake_transformers, bench_model.parse_spec("hf:CLIPConfig:text.vocab_size=9"))
    assert cfg.text_config.vocab_size == 9
    w = bench_model.build_workload(bench_model.parse_spec("hf:clip"))
    batch = w.batch(2, torch.device("cpu"))
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["input_ids"].shape == (2, 8)
    for bad, words in [("hf:clip:vision.depth=3", "CLIPVisionConfig has no attribute 'depth'"),
                       ("hf:clip:depth=3", "'depth' is not an attribute of CLIPConfig or its text/vision configs"),
                       ("hf:gpt99", "transformers knows no model type or config class 'gpt99'")]:
        with pytest.raises(ValueError, match=words):
            bench_model.hf_config(fake_transformers, bench_model.parse_spec(bad))


def test_cpu_run_warns_and_help_lists_it() -> None:
    from lowbit.cli.bench import HELP, cpu_warning
    from lowbit.cli.main import build_parser

    args = build_parser().parse_args(["bench", "model", "--model", "timm:vit_tiny", "--device", "cpu"])
    assert "CPU timings say nothing about the GPU speed-ups" in (cpu_warning(args) or "")
    assert "model" in HELP.split(":", 1)[1].split(" | ")


def test_bench_step_model_runs_bench_model_with_its_options(fake_timm, tmp_path: Path, capsys,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``lowbit bench step --model SPEC`` times the model as ``lowbit bench model`` does, with bench step's options."""
    rc = main(["bench", "step", "--model", "timm:vit_tiny", "--recipe", "bf16", "switchback-sim:fused",
               "--batch-size", "4", "--steps", "2", "--warmup", "1", "--device", "cpu", "--no-anchors",
               "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "model.json").read_text())
    rows = {r["recipe"]: r for r in data["rows"]}
    assert list(rows) == ["bf16", "switchback-sim:fused"] and all("error" not in r for r in rows.values())
    assert rows["bf16"]["batch"] == 4 and data["args"]["steps"] == 2 and data["args"]["layers"] == "auto"
    assert not (tmp_path / "step.json").exists()
    # bench model's checks run first: a bad option is one line
    assert main(["bench", "step", "--model", "timm:vit_tiny", "--cudagraphs", "--device", "cpu"]) == 2
    assert "--cudagraphs needs --compile" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert main(["bench", "step", "--model", "hf:clip", "--device", "cpu"]) == 2
    assert "needs the transformers package" in capsys.readouterr().err


def test_profile_puts_each_rows_split_in_the_row_and_a_file(fake_timm, tmp_path: Path) -> None:
    """``--profile``: after the timing, profiled steps classed per kernel (here the CPU's operators)."""
    data = _bench(tmp_path, "timm:vit_tiny", "switchback-sim", extra=("--layers", "all", "--profile", "1"))
    for r in data["rows"]:
        assert r["profile_ms"]["layernorm"] > 0 and sum(r["profile_ms"].values()) > 0, r["profile_ms"]
        path = Path(r["profile_file"])
        assert path.parent == tmp_path / "profile" and path.read_text().startswith(f"### timm:vit_tiny {r['recipe']}")
    assert "profile_ms" not in _bench(tmp_path / "plain", "timm:vit_tiny", "bf16")["rows"][0]


def test_layers_measured_times_each_linear_at_its_own_rows(fake_timm, tmp_path: Path, monkeypatch) -> None:
    """``--layers measured``: one forward counts each linear's rows (batch 4 × 4 patches for the blocks, 4 pooled
    rows for the head), each shape is measured there (here a fake timing: the 32→32 projections lose), and only the
    faster layers convert; ``bench step --model ... --layers auto`` means the same."""
    from lowbit.nn import autolayers
    from lowbit.nn.autolayers import ShapeTimer

    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(ShapeTimer, "can_measure", property(lambda self: None))
    seen: list[tuple[int, int, int]] = []

    def fake(recipe: object, device: object, tokens: int, d_in: int, d_out: int, bias: bool = True):
        seen.append((tokens, d_in, d_out))
        return 1.0, 2.0 if d_in == d_out else 0.5, "fake graphs"

    monkeypatch.setattr(autolayers, "measure_linear", fake)
    rows = _bench(tmp_path, "timm:vit_tiny:num_classes=16", "switchback-sim", extra=("--layers", "measured"))["rows"]
    # per block qkv 32→96, fc1 32→128, fc2 128→32 convert, proj 32→32 loses; the head 32→16, measured at 4 rows
    assert rows[1]["converted"] == "7/9" and "(measured slower: 2)" in rows[1]["convert_report"], rows[1]
    assert sorted(set(seen)) == [(4, 32, 16), (16, 32, 32), (16, 32, 96), (16, 32, 128), (16, 128, 32)]
    assert len(seen) == 5  # one measurement per shape
    assert rows[1]["layers_measured"].startswith("7 of 9 linears in switchback-sim; measured fwd+bwd vs bf16 on this "
                                                 "device: 16×32→96 2.00× 8-bit, 16×32→32 0.50× 16-bit")
    assert "layers_measured" not in rows[0]  # the bf16 row converts nothing and counts nothing
