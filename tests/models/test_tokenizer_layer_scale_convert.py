"""Tokenizers, LayerScale, and the CLIP conversion filter."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit.models import (
    CLIP,
    BPETokenizer,
    ByteTokenizer,
    clip_module_filter,
    convert_clip,
    get_config,
    get_tokenizer,
)
from lowbit.models.convert import make_clip_module_filter
from lowbit.models.tokenizer import BPE_VOCAB_FILE, find_bpe_vocab
from lowbit.nn.layer_scale import LayerScale


def test_byte_tokenizer_layout_and_roundtrip() -> None:
    tok = ByteTokenizer(context_length=10)
    t = tok(["hé", "a"])
    assert t.shape == (2, 10) and t.dtype == torch.long
    assert t[0].tolist() == [1, ord("h") + 3, 0xC3 + 3, 0xA9 + 3, 2, 0, 0, 0, 0, 0]
    assert tok.decode(t[0]) == "hé"
    assert tok.vocab_size == 259 and int(t.max()) < 259


def test_byte_tokenizer_truncation_keeps_end_token() -> None:
    tok = ByteTokenizer(context_length=6)
    t = tok("abcdefghij")
    assert t[0].tolist() == [1, *(ord(c) + 3 for c in "abcd"), 2]
    with pytest.raises(TypeError, match="expects str"):
        tok([3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="context_length"):
        ByteTokenizer(1)


def test_bpe_tokenizer_ships_its_vocabulary() -> None:
    """The merges file and its license notice are in the package, so ``bpe`` needs no network and no open_clip."""
    assert find_bpe_vocab() == BPE_VOCAB_FILE and BPE_VOCAB_FILE.is_file()
    assert "MIT License" in BPE_VOCAB_FILE.with_name("bpe_simple_vocab_16e6.LICENSE").read_text()
    t = get_tokenizer("bpe", 77)(["a photo of a cat"])
    assert t[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer("chars")


# Expected ids from OpenAI CLIP's own tokenizer (open_clip 3.3.0 ``SimpleTokenizer.encode``, run once on the same
# vocabulary file); they pin lowbit's re-implementation of the BPE to CLIP's.
CLIP_IDS = {
    "a photo of a cat.": [320, 1125, 539, 320, 2368, 269],
    "A diagram of a red circle on a blue background": [320, 22697, 539, 320, 736, 7117, 525, 320, 1746, 5994],
    "it's 2026!  Hello, world": [585, 568, 273, 271, 273, 277, 256, 3306, 267, 1002],
    "naïve café &amp; crème brûlée": [1097, 35689, 563, 15304, 261, 1075, 12138, 614, 711, 127, 119, 75, 13489],
    "photosynthesis unbelievably": [1153, 21602, 33781],
}


@pytest.mark.parametrize("text", list(CLIP_IDS))
def test_bpe_tokenizer_matches_clip_ids(text: str) -> None:
    tok = get_tokenizer("bpe", 77)
    assert tok.encode(text) == CLIP_IDS[text]
    assert tok(text)[0, : len(CLIP_IDS[text]) + 2].tolist() == [49406, *CLIP_IDS[text], 49407]


def test_bpe_tokenizer_ids_follow_the_merges() -> None:
    """Ids are laid out as CLIP's: 256 byte symbols, the same with ``</w>``, one per merge, then start/end."""
    tok = get_tokenizer("bpe", 77)
    with gzip.open(BPE_VOCAB_FILE, "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1:49152 - 256 - 2 + 1]
    for rank in (0, 1, 1000, len(merges) - 1):
        a, b = merges[rank].split()
        assert tok.encoder[a + b] == 512 + rank
    assert tok.encoder["<start_of_text>"] == 49406 and tok.encoder["<end_of_text>"] == 49407


def test_bpe_vocab_override_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="vocab_path"):
        BPETokenizer(vocab_path=tmp_path / "missing.txt.gz")
    monkeypatch.setenv("LOWBIT_BPE_VOCAB", str(tmp_path / "missing.txt.gz"))
    with pytest.raises(FileNotFoundError, match="LOWBIT_BPE_VOCAB"):
        find_bpe_vocab()


_OFFLINE = """
import socket, sys
sys.modules["open_clip"] = None  # importing open_clip now fails
def _no_network(*a, **k):
    raise OSError("network used")
socket.socket.connect = _no_network
socket.create_connection = _no_network
import torch
from lowbit.models import CLIP, get_config, get_tokenizer, list_presets
for name in list_presets():
    cfg = get_config(name)
    tokens = get_tokenizer(cfg.tokenizer, cfg.text.context_length)(["a photo of a cat", "a red circle"])
    assert tokens.shape == (2, cfg.text.context_length) and int(tokens.max()) < cfg.text.vocab_size, name
    with torch.device("meta"):  # builds every layer without allocating ViT-H's 4 GB
        model = CLIP(cfg)
        features = model.encode_text(tokens.to("meta"))
    assert features.shape == (2, cfg.embed_dim), name
    print(name, "ok")
"""


def test_every_preset_builds_and_tokenizes_offline() -> None:
    """Every preset's tokenizer works in a process that cannot import open_clip or open a connection."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _OFFLINE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    from lowbit.models import list_presets

    assert out.stdout.split() == [w for name in list_presets() for w in (name, "ok")]


def test_layer_scale() -> None:
    ls = LayerScale(4, 0.0)
    assert isinstance(ls.gamma, nn.Parameter) and ls.gamma.shape == (4,)
    x = torch.randn(2, 3, 4)
    assert torch.count_nonzero(ls(x)) == 0
    ls = LayerScale(4, 0.5)
    torch.testing.assert_close(ls(x), 0.5 * x)
    ls(x).sum().backward()
    torch.testing.assert_close(ls.gamma.grad, x.sum(dim=(0, 1)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ls(x.bfloat16()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="last dimension 4"):
        ls(torch.randn(3, 5))
    with pytest.raises(ValueError, match="dim"):
        LayerScale(0, 0.0)
    assert "init_value=0.5" in repr(ls)


def test_module_filter_keeps_projections_and_first_layer() -> None:
    model = CLIP(get_config("tiny"))
    chosen = {n for n, m in model.named_modules() if clip_module_filter(n, m)}
    assert "visual.proj" not in chosen and "text.proj" not in chosen
    assert not any(n.startswith("visual.patch_embed") for n in chosen)
    assert "visual.blocks.0.attn.qkv" in chosen and "text.blocks.1.mlp.proj" in chosen
    assert all(isinstance(dict(model.named_modules())[n], nn.Linear) for n in chosen)
    f = make_clip_module_filter(keep_last_blocks=1, depths={"visual": 3, "text": 2}, keep_projections=False)
    chosen = {n for n, m in model.named_modules() if f(n, m)}
    assert "visual.proj" in chosen and "visual.blocks.1.mlp.fc" in chosen
    assert "visual.blocks.2.mlp.fc" not in chosen and "text.blocks.1.attn.qkv" not in chosen
    with pytest.raises(ValueError, match="depths"):
        make_clip_module_filter(keep_last_blocks=1)


def test_layers_auto_keeps_narrow_linears_16bit() -> None:
    """``layers="auto"`` = the CLIP filter and lowbit.nn's size threshold: a ViT-H-width MLP linear converts, a
    1024-wide text-tower linear and the tiny preset's stay 16-bit; ``clip`` converts them all."""
    wide, narrow = nn.Linear(1280, 5120), nn.Linear(1024, 4096)
    auto, clip = make_clip_module_filter(layers="auto"), make_clip_module_filter(layers="clip")
    assert auto("visual.blocks.0.mlp.fc", wide) and not auto("text.blocks.0.mlp.fc", narrow)
    assert clip("visual.blocks.0.mlp.fc", wide) and clip("text.blocks.0.mlp.fc", narrow)
    assert not auto("visual.proj", wide)  # the CLIP rules still apply
    with pytest.raises(ValueError, match="layers must be one of clip, auto, wide"):
        make_clip_module_filter(layers="all")
    try:
        from lowbit.nn import convert  # noqa: F401
    except ImportError:
        return
    model = convert_clip(CLIP(get_config("tiny")), "switchback-sim", layers="auto")
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))


def test_layers_wide_is_the_threshold_and_never_measures() -> None:
    """``layers="wide"`` converts what ``lowbit.convert``'s default converts in other models (both widths >= 1280),
    without timing anything, even where ``auto`` would measure (a recipe, a device and token counts given)."""

    def measure(*args: object) -> tuple[float, float, str]:
        raise AssertionError("layers='wide' measured a shape")

    wide = make_clip_module_filter(layers="wide", recipe="fp8-switchback", device="cpu",
                                   tokens={"visual": 8, "text": 8}, measure=measure)
    assert wide("visual.blocks.0.mlp.fc", nn.Linear(1280, 5120))
    assert wide("visual.blocks.0.attn.out", nn.Linear(1280, 1280))
    assert not wide("text.blocks.0.mlp.fc", nn.Linear(1024, 4096))  # ViT-H's text tower: 1024 wide
    assert not wide("visual.blocks.0.mlp.fc", nn.Linear(1280, 1000))  # both widths count
    assert not wide("visual.proj", nn.Linear(1280, 1280))  # the CLIP rules still apply


def test_convert_clip_none_is_identity_and_recipes_use_lowbit_nn() -> None:
    model = CLIP(get_config("tiny"))
    assert convert_clip(model, "none") is model
    try:
        from lowbit.nn import convert  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"lowbit\.nn\.convert"):
            convert_clip(model, "bf16")
        return
    x = torch.randn(2, 3, 32, 32)
    before = model.encode_image(x)
    out = convert_clip(model, "bf16")
    assert type(out.visual.proj) is nn.Linear
    assert type(out.visual.blocks[0].attn.qkv) is not nn.Linear
    torch.testing.assert_close(out.encode_image(x), before, atol=0.1, rtol=0.1)


def _fake_bpe_vocab(path: Path) -> Path:
    """A merges file with CLIP's layout and size (48894 merges), built from byte pairs: not CLIP's vocabulary,
    but it drives every line of the BPE code."""
    from lowbit.models.tokenizer import _bytes_to_unicode

    chars = list(_bytes_to_unicode().values())
    merges = ["t h", "th e</w>", "c a", "ca t</w>"]
    merges += [f"{a} {b}" for a in chars for b in chars if a + b not in ("th", "ca")][: 48894 - len(merges)]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: fake\n" + "\n".join(merges) + "\n")
    return path


def test_bpe_tokenizer_code_path_with_a_fake_vocabulary(tmp_path: Path) -> None:
    tok = BPETokenizer(context_length=8, vocab_path=_fake_bpe_vocab(tmp_path / "bpe.txt.gz"))
    assert tok.vocab_size == 49408
    t = tok(["The  CAT", "the cat the cat the cat"])
    the, cat = tok.encoder["the</w>"], tok.encoder["cat</w>"]
    assert t[0].tolist() == [49406, the, cat, 49407, 0, 0, 0, 0]  # lower-cased, whitespace collapsed
    assert t[1].tolist() == [49406, the, cat, the, cat, the, cat, 49407]  # truncated, end token kept
    assert tok.encode("&amp;") == tok.encode("&")  # html unescaped
