"""``lowbit data prepare`` on tiny inputs in the real formats (IDX files; emoji.json + PNGs), read back."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from lowbit.cli.main import main
from lowbit.data import CLIP_MEAN, CLIP_STD, build_train_data, build_zeroshot, describe
from lowbit.data.prepare import FASHION_MNIST_CLASSES, emoji_records, prepare, read_idx, verify


def _idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _brightness(label: int) -> int:
    return 20 + 23 * label  # each class has its own gray level: lets us check image <-> caption pairing


@pytest.fixture
def fashion_src(tmp_path: Path) -> Path:
    src = tmp_path / "fmnist"
    src.mkdir()
    for split, n, compress in (("train", 13, True), ("t10k", 7, False)):  # .gz and plain both accepted
        labels = (np.arange(n) * 3) % 10
        images = np.stack([np.full((28, 28), _brightness(int(y)), np.uint8) for y in labels])
        images[:, 0, 0] = np.arange(n)  # make every image distinct
        suffix = ".gz" if compress else ""
        _idx(src / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        _idx(src / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)
    return src


def _gray(img) -> float:
    pix = img.numpy() * np.array(CLIP_STD).reshape(3, 1, 1) + np.array(CLIP_MEAN).reshape(3, 1, 1)
    return float(np.median(pix[0]) * 255)


def test_fashion_mnist_prepare_and_read_back(fashion_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "fm"
    manifest = prepare("fashion-mnist", out, source=fashion_src, shard_size=5)
    assert manifest["splits"]["train"] == {"count": 13, "shards": ["train-000000.tar", "train-000001.tar", "train-000002.tar"]}
    assert manifest["splits"]["test"]["count"] == 7 and verify(out) == []
    assert len(manifest["files"]) == 5 and manifest["splits"]["test"]["shards"] == ["test-000000.tar", "test-000001.tar"]
    assert describe(str(out))["splits"]["train"] == {"shards": 3, "samples": 13}

    ds = build_train_data(str(out), image_size=32, seed=0)
    seen = set()
    for img, cap in [s for s, _ in zip(ds, range(13))]:
        named = [c for c in FASHION_MNIST_CLASSES if c in cap and not (c == "shirt" and "t-shirt" in cap)]
        assert len(named) == 1, cap
        label = FASHION_MNIST_CLASSES.index(named[0])
        assert abs(_gray(img) - _brightness(label)) < 3, (cap, _gray(img))  # caption describes this image
        seen.add(cap)
    assert len(seen) > 3 and not any(ds.stats.values())  # nothing skipped, for any reason

    ((task, test),) = build_zeroshot(str(out), image_size=28)
    assert task.name == "fashion-mnist" and task.classnames == FASHION_MNIST_CLASSES
    assert len(test) == 7 and all("{}" in t for t in task.templates)
    for i in range(len(test)):
        img, label = test[i]
        assert label == (i * 3) % 10 and abs(_gray(img) - _brightness(label)) < 3
    ((_, sub),) = build_zeroshot(str(out), image_size=28, limit=3, seed=1)
    assert len(sub) == 3


def test_prepare_is_reproducible_and_verify_catches_damage(fashion_src: Path, tmp_path: Path) -> None:
    a = prepare("fashion-mnist", tmp_path / "a", source=fashion_src)
    b = prepare("fashion-mnist", tmp_path / "b", source=fashion_src)
    assert a["files"] == b["files"]
    with pytest.raises(FileExistsError):
        prepare("fashion-mnist", tmp_path / "a", source=fashion_src)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "train-mine.tar").write_bytes(b"user file")
    prepare("fashion-mnist", tmp_path / "c", source=fashion_src, shard_size=4)
    prepare("fashion-mnist", tmp_path / "c", source=fashion_src, shard_size=7, force=True)
    assert sorted(p.name for p in (tmp_path / "c").glob("*.tar")) == [
        "test-000000.tar", "train-000000.tar", "train-000001.tar", "train-mine.tar",
    ]  # fmt: skip
    shard = tmp_path / "a" / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert verify(tmp_path / "a") == ["train-000000.tar: sha256 mismatch"]
    (tmp_path / "b" / "test-000000.tar").unlink()
    with pytest.raises(FileNotFoundError, match="test-000000.tar"):
        build_train_data(str(tmp_path / "b"), image_size=16, seed=0)


def test_missing_sources_say_what_to_install(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        prepare("fashion-mnist", tmp_path / "o", source=tmp_path)
    with pytest.raises(FileNotFoundError, match="npm install emoji-datasource-google"):
        prepare("emoji", tmp_path / "o", source=tmp_path)
    rc = main(["data", "prepare", "emoji", "--out", str(tmp_path / "o"), "--source", str(tmp_path)])
    assert rc == 2 and "npm install emoji-datasource-google" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown dataset"):
        prepare("mnist", tmp_path / "o")


def test_bad_idx_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"\x00\x00\x0d\x01" + struct.pack(">I", 3) + b"\0" * 12)  # float elements
    with pytest.raises(ValueError, match="unsigned byte"):
        read_idx(tmp_path / "x")
    (tmp_path / "y").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"abc")  # short body
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "y")
    (tmp_path / "z").write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(tmp_path / "z")


_CATEGORY_COLOURS = {"Smileys & Emotion": (250, 200, 0), "Animals & Nature": (0, 160, 0), "Flags": (0, 0, 220)}


@pytest.fixture
def emoji_src(tmp_path: Path, png) -> Path:
    """An npm-like package folder: emoji.json in the emoji-datasource format + RGBA PNGs."""
    root = tmp_path / "node_modules" / "emoji-datasource-google"
    img = root / "img" / "google" / "64"
    img.mkdir(parents=True)
    entries = []
    names = {"Smileys & Emotion": ["GRINNING FACE", "FACE WITH TEARS OF JOY", "WINKING FACE", "THINKING FACE"],
             "Animals & Nature": ["DOG FACE", "CAT FACE", "TIGER", "OAK TREE"],
             "Flags": ["Andorra Flag", "Japan Flag", "Chequered Flag", "Pirate Flag"]}  # fmt: skip
    order = 0
    for cat, cat_names in names.items():
        for name in cat_names:
            order += 1
            code = f"1F{order:03X}"
            entry = {"name": name, "unified": code, "image": f"{code.lower()}.png", "short_name": name.lower().replace(" ", "_"),
                     "category": cat, "subcategory": "x", "sort_order": order, "has_img_google": True}  # fmt: skip
            (img / entry["image"]).write_bytes(png((*_CATEGORY_COLOURS[cat], 255), (64, 64), "RGBA"))
            if name == "DOG FACE":
                var = {"unified": f"{code}-1F3FD", "image": f"{code.lower()}-1f3fd.png", "has_img_google": True}
                entry["skin_variations"] = {"1F3FD": var}
                (img / var["image"]).write_bytes(png((*_CATEGORY_COLOURS[cat], 255), (64, 64), "RGBA"))
            entries.append(entry)
    entries.append({"name": "EMOJI MODIFIER FITZPATRICK TYPE-4", "unified": "1F3FD", "image": "1f3fd.png",
                    "category": "Component", "sort_order": 99, "has_img_google": True})  # fmt: skip
    (img / "1f3fd.png").write_bytes(png((1, 2, 3, 255), (64, 64), "RGBA"))
    entries.append({"name": "NO IMAGE", "unified": "1F999", "image": "1f999.png", "category": "Flags",
                    "sort_order": 100, "has_img_google": False})  # fmt: skip
    (root / "emoji.json").write_text(json.dumps(entries))
    (root / "package.json").write_text('{"name": "emoji-datasource-google", "version": "0.0.1"}')
    return tmp_path


def test_emoji_prepare_and_read_back(emoji_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "emoji"
    rc = main(["data", "prepare", "emoji", "--out", str(out), "--source", str(emoji_src)])  # finds node_modules/...
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    classnames, records = emoji_records(emoji_src / "node_modules" / "emoji-datasource-google")
    assert classnames == ["smileys and emotion", "animals and nature", "flags"]  # no "component"
    n_train, n_test = len(records["train"]), len(records["test"])
    assert n_train + n_test in (12, 13)  # 12 emoji (+1 skin-tone variant if DOG FACE is in train)
    assert manifest["splits"]["train"]["count"] == n_train and manifest["source"]["version"] == "0.0.1"
    assert main(["data", "verify", str(out)]) == 0

    colours = {i: _CATEGORY_COLOURS[c] for i, c in enumerate(_CATEGORY_COLOURS)}
    ds = build_train_data(str(out), image_size=32, seed=0)
    lower = {n.lower() for names in [["grinning face", "face with tears of joy", "winking face", "thinking face",
                                      "dog face", "cat face", "tiger", "oak tree", "andorra flag", "japan flag",
                                      "chequered flag", "pirate flag"]] for n in names}  # fmt: skip
    for (img, cap), _ in zip(ds, range(n_train)):
        assert any(n in cap for n in lower) or "(" in cap, cap
        red = float(np.median(img.numpy()[0] * CLIP_STD[0] + CLIP_MEAN[0]) * 255)
        assert min(abs(red - c[0]) for c in colours.values()) < 3  # composited RGBA, colour kept
    assert n_test > 0  # the hash split puts 4 of these 12 code points in the test split
    ((task, test),) = build_zeroshot(str(out), image_size=32)
    assert task.name == "emoji-category" and task.classnames == classnames and len(test) == n_test
    for i in range(len(test)):
        img, label = test[i]
        red = float(np.median(img.numpy()[0] * CLIP_STD[0] + CLIP_MEAN[0]) * 255)
        assert abs(red - colours[label][0]) < 3


def test_cli_info_bench_preview(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["data", "info", "synthetic:max_objects=1"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["max_objects"] == 1
    assert main(["data", "bench", "synthetic", "--n", "64", "--image-size", "16"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 64
    assert main(["data", "preview", "--out", str(tmp_path / "p.png"), "--n", "6", "--image-size", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and lines[0].startswith("   0 ")
    from PIL import Image

    assert Image.open(tmp_path / "p.png").size == (48, 32)  # 3 columns x 2 rows of 16 px
    assert main(["data", "info", "/definitely/not/here"]) == 2
    assert "not/here" in capsys.readouterr().err


def test_prepare_prints_a_train_command_that_brings_its_zeroshot_task(
    fashion_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``lowbit data prepare`` ends with a full train command; run as printed (plus a few quick-run flags), the
    trainer evaluates on the prepared folder's own task, not the synthetic ones (``--zeroshot auto``)."""
    import shlex

    from lowbit.data.spec import zeroshot_spec

    out = tmp_path / "fm"
    assert main(["data", "prepare", "fashion-mnist", "--out", str(out), "--source", str(fashion_src)]) == 0
    command = capsys.readouterr().out.strip().splitlines()[-1].strip()
    assert command == f"lowbit train --data {out} --out runs/fm"
    assert zeroshot_spec("auto", str(out)) == str(out)
    assert zeroshot_spec("auto", "synthetic") == zeroshot_spec("auto", str(tmp_path)) == "synthetic"
    assert zeroshot_spec("none", str(out)) == "none" and zeroshot_spec("synthetic", str(out)) == "synthetic"

    run = tmp_path / "run"
    quick = ["--steps", "2", "--warmup", "1", "--batch-size", "4", "--no-progress", "--threads", "1", "--out", str(run)]
    assert main(shlex.split(command)[1:] + quick) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["zeroshot"]) == ["fashion-mnist"] and summary["chance"]["fashion-mnist"] == 0.1
