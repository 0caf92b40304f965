"""Data faults (issue 32): empty and header-cut shards are reported, not dropped without a word; the bad-sample
accounting counts exactly the samples the run consumed, with any number of DataLoader workers; data errors name
the shard and key; oversized images are skipped with one line before they are decoded."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lowbit.data import build_train_data
from lowbit.data.tars import write_shard
from lowbit.train import TrainConfig, train


def _samples(png, n: int, start: int = 0) -> list[tuple[str, dict[str, bytes]]]:
    return [(f"{i:04d}", {"png": png((i % 256, 0, 0)), "txt": f"s {i}".encode()}) for i in range(start, start + n)]


def test_empty_and_header_cut_shards_are_reported(tiny_train: dict, tmp_path: Path, png, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_shard(data / "a.tar", _samples(png, 12))
    (data / "b.tar").write_bytes(b"")  # empty
    write_shard(data / "c.tar", _samples(png, 4, 100))
    (data / "c.tar").write_bytes((data / "c.tar").read_bytes()[:300])  # cut inside the first header
    ds = build_train_data(str(data), image_size=16, seed=0)
    assert ds.damage["empty_shards"] == {str(data / "b.tar"): "empty file (0 bytes)",
                                         str(data / "c.tar"): "no end-of-archive marker (truncated?) (300 bytes)"}
    summary = train(TrainConfig.from_dict({**tiny_train, "data": str(data), "out": str(tmp_path / "run"), "steps": 1}))
    out = capsys.readouterr().err  # lowbit's warnings are one line each on stderr (lowbit.messages)
    assert "2 shard(s) without a usable sample, left out" in out and "b.tar (empty file (0 bytes))" in out, out
    assert summary["data"]["empty_shards"] == 2
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["data"]["empty_shards"] == 2


def _bad_shards(tmp_path: Path, png, n: int = 400, every: int = 16) -> Path:
    """One shard, every ``every``-th image undecodable (6%)."""
    data = tmp_path / "bad"
    data.mkdir()
    samples = [(f"{i:04d}", {"png": b"\x89PNG broken" if i % every == 3 else png((i % 256, 9, 9)), "txt": f"s {i}".encode()})
               for i in range(n)]
    write_shard(data / "000.tar", samples)
    return data


def _data_columns(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return [{k: v for k, v in r.items() if k.startswith("data/")} for r in csv.DictReader(f)]


def test_bad_samples_are_counted_as_consumed_with_any_number_of_workers(tiny_train: dict, tmp_path: Path, png) -> None:
    """DataLoader workers read batches ahead: only the samples the steps used count (were: read-ahead skips counted
    as bad, used samples as read, so 6% bad data looked like 19%)."""
    data = _bad_shards(tmp_path, png)
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        runs[workers] = train(TrainConfig.from_dict({**tiny_train, "data": str(data), "out": str(out), "steps": 4,
                                                     "workers": workers}))
    assert runs[0]["data"] == runs[2]["data"] and 0 < runs[0]["data"]["skipped_images"] < 8, runs
    assert _data_columns(tmp_path / "w0") == _data_columns(tmp_path / "w2")


def test_consumed_stats_ignore_read_ahead(tmp_path: Path, png) -> None:
    data = _bad_shards(tmp_path, png)
    ds = build_train_data(str(data), image_size=16, seed=0, batch_size=8)
    it = iter(ds)
    for _ in range(8 * 10):  # ten batches read
        next(it)
    total = ds.stats["skipped_images"]
    assert total > 0
    assert ds.consumed_stats(8 * 10)["skipped_images"] == total
    ds2 = build_train_data(str(data), image_size=16, seed=0, batch_size=8)
    it = iter(ds2)
    per_batch = []
    for b in range(10):
        for _ in range(8):
            next(it)
        per_batch.append(ds2.consumed_stats(8 * b)["skipped_images"])  # batch b read, not yet used
    assert per_batch[-1] < total and ds2.consumed_stats(80)["skipped_images"] == total


def test_a_data_error_in_a_worker_names_the_shard_and_key(tmp_path: Path, png, capsys: pytest.CaptureFixture[str]) -> None:
    """All images broken, --workers 2: one line naming the shard and a key (was "Caught ValueError in DataLoader
    worker process 0"; examples printed <_io.BytesIO object at 0x...> instead of the sample)."""
    from lowbit.cli.main import main

    data = tmp_path / "broken"
    data.mkdir()
    write_shard(data / "000.tar", [(f"{i:04d}", {"png": b"\x89PNG broken", "txt": b"x"}) for i in range(20)])
    rc = main(["train", "--data", str(data), "--workers", "2", "--zeroshot", "none", "--steps", "1", "--warmup", "0",
               "--batch-size", "4",
               "--recipe", "none", "--optimizer", "adamw", "--device", "cpu", "--threads", "1", "--no-progress",
               "--set", "model.vision.layers=1", "--set", "model.text.layers=1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "no usable sample" in err and f"{data / '000.tar'} key 00" in err and "DataLoader worker process" in err, err
    assert "BytesIO" not in err and not err.split("error: ", 1)[1].startswith("Caught"), err


def test_images_above_max_image_pixels_are_skipped_unread(tmp_path: Path, png, monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from PIL import Image

    from lowbit.data.image import ImageTooLarge, decode_image

    big = png((1, 2, 3), size=(1200, 1000))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600_000)  # PIL would warn (and decode it in full)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning
        with pytest.raises(ImageTooLarge, match=r"image is 1200x1000 \(1\.2 MP\), above --max-image-pixels 1,000,000"):
            decode_image(big, 16, max_pixels=1_000_000)
        assert decode_image(big, 16, max_pixels=2_000_000).shape == (3, 16, 16)
    data = tmp_path / "big"
    data.mkdir()
    write_shard(data / "000.tar", [*_samples(png, 7), ("big1", {"png": big, "txt": b"huge"})])
    ds = build_train_data(str(data), image_size=16, seed=0, max_image_pixels=1_000_000)
    it = iter(ds)
    for _ in range(16):
        next(it)
    assert ds.stats["skipped_large_images"] >= 1 and ds.stats["skipped_images"] == 0
    assert ds.examples["skipped_large_images"][0].startswith(f"{data / '000.tar'} key big1: image is 1200x1000")
