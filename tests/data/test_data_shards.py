"""WebDataset shards and CSV/TSV tables: patterns, corrupt data (skipped + counted), clear errors."""

from __future__ import annotations

import gzip
import io
import itertools
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lowbit.data import CLIP_MEAN, CLIP_STD, build_train_data, build_zeroshot, decode_image, describe
from lowbit.data.tars import braceexpand, index_shard, write_shard


def _captions(ds, n: int) -> list[str]:
    return [c for _, c in itertools.islice(iter(ds), n)]


def test_braceexpand() -> None:
    assert braceexpand("s/{000..002}.tar") == ["s/000.tar", "s/001.tar", "s/002.tar"]
    assert braceexpand("{a,b}{1..2}") == ["a1", "a2", "b1", "b2"]
    assert braceexpand("x{9..11}") == ["x9", "x10", "x11"]
    assert braceexpand("plain.tar") == ["plain.tar"]
    with pytest.raises(ValueError):
        braceexpand("bad{1..2")


def test_patterns_braces_globs_and_directories(make_shards, tmp_path: Path) -> None:
    make_shards(9, 4)  # shard-000 (4), -001 (4), -002 (1)
    for spec in (f"{tmp_path}/shard-{{000..002}}.tar", f"{tmp_path}/*.tar", str(tmp_path),
                 f"{tmp_path}/shard-000.tar::{tmp_path}/shard-00[12].tar"):  # fmt: skip
        d = describe(spec)
        assert (d["kind"], d["shards"], d["samples"]) == ("shards", 3, 9), spec
        assert sorted(_captions(build_train_data(spec, image_size=16, seed=0), 9)) == sorted(
            f"sample {i}" for i in range(9)
        )
    assert describe(f"{tmp_path}/shard-001.tar")["samples"] == 4


def test_missing_unknown_and_empty_specs_name_the_problem(make_shards, tmp_path: Path, png) -> None:
    make_shards(2, 2)
    with pytest.raises(FileNotFoundError, match="shard-009.tar"):
        build_train_data(f"{tmp_path}/shard-{{000..009}}.tar", image_size=16, seed=0)
    with pytest.raises(FileNotFoundError, match="nothing-"):
        build_train_data(f"{tmp_path}/nothing-*.tar", image_size=16, seed=0)
    with pytest.raises(FileNotFoundError, match="nope"):
        build_train_data(str(tmp_path / "nope"), image_size=16, seed=0)
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        build_train_data(str(tmp_path / "missing.csv"), image_size=16, seed=0)
    odd = tmp_path / "notes.bin"
    odd.write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown data spec"):
        describe(str(odd))
    with pytest.raises(ValueError, match="empty"):
        describe("")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        describe(str(tmp_path / "empty"))
    only_images = tmp_path / "no_captions.tar"
    write_shard(only_images, [("a", {"png": png(3)})])
    with pytest.raises(ValueError, match="no sample"):
        build_train_data(str(only_images), image_size=16, seed=0)
    gz = tmp_path / "packed.tar"
    gz.write_bytes(gzip.compress(only_images.read_bytes()))
    with pytest.raises(ValueError, match="compressed"):
        build_train_data(str(gz), image_size=16, seed=0)
    with pytest.raises(ValueError, match="zero-shot"):
        build_zeroshot(str(only_images), image_size=16)


def _corrupt_shard(path: Path, png, jpeg) -> None:
    """A real tar: 6 good samples, one broken image, one caption that is not UTF-8, one image without caption."""
    good = [(f"g{i}", {"jpg": jpeg((40 * i, 90, 200)), "txt": f"good {i}".encode()}) for i in range(6)]
    broken = ("bad_image", {"png": png((1, 2, 3))[:40] + b"\0" * 20, "txt": b"broken image"})
    undecodable = ("bad_caption", {"webp": png((9, 9, 9)), "txt": b"\xff\xfe caption \xc3"})
    orphan = ("orphan", {"png": png((5, 5, 5))})
    samples = [*good[:2], broken, *good[2:4], undecodable, orphan, *good[4:]]
    # .webp member holding PNG bytes: Pillow sniffs content, so it decodes (extension only routes).
    write_shard(path, samples)


def test_corrupt_samples_are_skipped_and_counted(tmp_path: Path, png, jpeg) -> None:
    shard = tmp_path / "corrupt.tar"
    _corrupt_shard(shard, png, jpeg)
    d = describe(str(shard))
    assert (d["samples"], d["incomplete"]) == (8, 1)  # the orphan image has no caption
    ds = build_train_data(str(shard), image_size=16, seed=0)
    caps = _captions(ds, 8 * 3)  # three epochs
    assert "broken image" not in caps and all(c.startswith("good") or c == "caption" for c in caps)
    assert sum(c == "caption" for c in caps) == 0
    assert ds.stats["skipped_images"] >= 3 and ds.stats["skipped_captions"] >= 3  # once per epoch at least
    assert set(caps) == {f"good {i}" for i in range(6)}


def test_skip_counters_aggregate_over_dataloader_workers(tmp_path: Path, png, jpeg) -> None:
    shard = tmp_path / "corrupt.tar"
    _corrupt_shard(shard, png, jpeg)
    single = build_train_data(str(shard), image_size=16, seed=0, batch_size=4)
    list(itertools.islice(DataLoader(single, batch_size=4), 8))
    multi = build_train_data(str(shard), image_size=16, seed=0, batch_size=4)
    list(itertools.islice(DataLoader(multi, batch_size=4, num_workers=2), 8))
    # The parent sees what the workers counted (they may have prefetched a little further than consumed).
    assert single.stats["skipped_images"] > 0 and single.stats["skipped_captions"] > 0
    assert all(multi.stats[k] >= single.stats[k] for k in single.stats)


def test_truncated_shard_keeps_the_samples_before_the_damage(make_shards, tmp_path: Path) -> None:
    (path,) = make_shards(6, 6, name="whole")
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2 + 100])  # mid-member
    idx = index_shard(str(cut))
    assert 0 < len(idx) < 6 and idx.error
    assert "damaged_shards" in describe(str(cut))
    caps = _captions(build_train_data(str(cut), image_size=16, seed=0), 10)
    assert set(caps) <= {f"sample {i}" for i in range(len(idx))}


def test_shards_are_standard_and_reproducible(make_shards, tmp_path: Path) -> None:
    import webdataset as wds

    (a,) = make_shards(3, 3, name="a")
    (b,) = make_shards(3, 3, name="b")
    assert a.read_bytes() == b.read_bytes()
    keys = [s["__key__"] for s in wds.WebDataset(str(a), shardshuffle=False)]
    assert keys == ["00000", "00001", "00002"]
    with tarfile.open(a) as tf:  # and the stdlib agrees
        assert tf.getnames()[:2] == ["00000.png", "00000.txt"]


def test_tarfile_fallback_for_pax_headers(tmp_path: Path, png) -> None:
    """Shards written by other tools (PAX headers, long names) are read through tarfile."""
    path = tmp_path / "pax.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(3):
            key = f"{'d' * 120}/sample{i}"
            for ext, data in (("png", png((i, i, i))), ("txt", f"pax {i}".encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.pax_headers = {"comment": "é"}
                tf.addfile(info, io.BytesIO(data))
    assert sorted(_captions(build_train_data(str(path), image_size=16, seed=0), 3)) == ["pax 0", "pax 1", "pax 2"]


def _pixels(t: torch.Tensor) -> np.ndarray:
    return t.numpy() * np.array(CLIP_STD).reshape(3, 1, 1) + np.array(CLIP_MEAN).reshape(3, 1, 1)


def test_image_preprocessing(png) -> None:
    # Non-square: shorter side resized to the target, centre crop; small images upsampled.
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    img.paste((255, 255, 255), (10, 0, 20, 10))  # white middle third
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = _pixels(decode_image(buf.getvalue(), 16))
    assert out.shape == (3, 16, 16) and out[:, :, 2:-2].min() > 0.95  # the centre crop is the white third
    # Transparent pixels become white; grayscale becomes three equal channels.
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    assert _pixels(decode_image(buf.getvalue(), 16)).min() > 0.99
    gray = _pixels(decode_image(png(128, (28, 28), mode="L"), 32))
    assert np.allclose(gray[0], gray[1], atol=1e-5) and np.allclose(gray[0], 128 / 255, atol=1e-3)
    with pytest.raises(Exception):  # noqa: B017 - any decoder error; the streams count it
        decode_image(b"not an image", 16)


def test_csv_and_tsv_tables(tmp_path: Path, png) -> None:
    (tmp_path / "img").mkdir()
    for i in range(3):
        (tmp_path / "img" / f"{i}.png").write_bytes(png((i * 80, 0, 0)))
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "a.csv").write_text(
        'filepath,caption\nimg/0.png,"zero, with comma"\nimg/1.png,one\nimg/missing.png,ghost\nimg/broken.png,bad\n'
        f"{tmp_path}/img/2.png,two\n"
    )
    ds = build_train_data(str(tmp_path / "a.csv"), image_size=16, seed=0)
    caps = _captions(ds, 10)
    assert set(caps) == {"zero, with comma", "one", "two"}
    assert ds.stats["skipped_images"] >= 1 and ds.stats["missing_files"] >= 1  # broken.png, missing.png
    d = describe(str(tmp_path / "a.csv"))
    assert (d["kind"], d["rows"], d["columns"]) == ("table", 5, ["filepath", "caption"])

    (tmp_path / "b.tsv").write_bytes(b"Image\tText\nimg/0.png\tred square\nimg/1.png\t\xff\xfe bad\n")
    ds = build_train_data(str(tmp_path / "b.tsv"), image_size=16, seed=0)
    assert set(_captions(ds, 6)) == {"red square"} and ds.stats["skipped_captions"] >= 1

    (tmp_path / "c.csv").write_text("path,label\nimg/0.png,x\n")
    with pytest.raises(ValueError, match="filepath"):
        build_train_data(str(tmp_path / "c.csv"), image_size=16, seed=0)
    (tmp_path / "d.csv").write_text("filepath,caption\n")
    with pytest.raises(ValueError, match="no rows"):
        build_train_data(str(tmp_path / "d.csv"), image_size=16, seed=0)
