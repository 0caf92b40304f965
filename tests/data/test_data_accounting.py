"""Bad data is counted per reason and named: corrupt images and captions in a tar, a truncated shard, a CSV
whose image files are missing, a prepared folder that no longer matches its manifest; the trainer shows the
counts (progress line, metrics.csv, summary.json) and stops past ``max_bad_fraction``."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest

from lowbit.data import build_train_data
from lowbit.data.spec import FORMAT, MANIFEST
from lowbit.data.tars import write_shard
from lowbit.train import TrainConfig, train
from lowbit.train.errors import DataError


def _table(tmp_path: Path, png, good: int, missing: int, broken: int = 0) -> Path:
    img = tmp_path / "img"
    img.mkdir(exist_ok=True)
    rows = []
    for i in range(good):
        (img / f"{i}.png").write_bytes(png((i * 9 % 256, 40, 90)))
        rows.append((f"img/{i}.png", f"colour {i}"))
    rows += [(f"img/gone-{i}.png", f"gone {i}") for i in range(missing)]
    for i in range(broken):
        (img / f"broken-{i}.png").write_bytes(b"\x89PNG not really")
        rows.append((f"img/broken-{i}.png", f"broken {i}"))
    path = tmp_path / "t.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "caption"])
        w.writerows(rows)
    return path


def _take(ds, n: int) -> list[str]:
    return [c for _, c in itertools.islice(iter(ds), n)]


def test_missing_and_undecodable_files_are_counted_apart(tmp_path: Path, png) -> None:
    ds = build_train_data(str(_table(tmp_path, png, good=6, missing=2, broken=1)), image_size=16, seed=0)
    caps = _take(ds, 27)  # three epochs of 9 rows
    assert set(caps) == {f"colour {i}" for i in range(6)}
    assert ds.stats["missing_files"] >= 6 and ds.stats["skipped_images"] >= 3 and ds.stats["skipped_captions"] == 0


def test_a_table_of_missing_files_names_them(tmp_path: Path, png) -> None:
    path = _table(tmp_path, png, good=0, missing=5)
    with pytest.raises(FileNotFoundError, match=r"none of the image files .*gone-0\.png.*resolve against"):
        build_train_data(str(path), image_size=16, seed=0)
    # missing past the rows looked at up front: the stream names them when nothing usable is left
    path = _table(tmp_path, png, good=0, missing=0, broken=1)  # one file exists, but does not decode
    path.write_text("filepath,caption\nimg/broken-0.png,b\n" + "".join(f"img/x{i}.png,x\n" for i in range(1100)))
    ds = build_train_data(str(path), image_size=16, seed=0)
    with pytest.raises(ValueError, match=r"no usable sample .*missing file\(s\) \(e\.g\. .*x\d+\.png"):
        _take(ds, 1)


def test_damaged_shards_are_described(tmp_path: Path, png) -> None:
    samples = [(f"{i:04d}", {"png": png((i, 0, 0)), "txt": f"s {i}".encode()}) for i in range(8)]
    write_shard(tmp_path / "a.tar", [*samples[:4], ("orphan", {"png": png((1, 1, 1))})])
    write_shard(tmp_path / "b.tar", samples[4:])
    data = (tmp_path / "b.tar").read_bytes()
    (tmp_path / "b.tar").write_bytes(data[: len(data) // 2])  # truncated mid-member
    ds = build_train_data(str(tmp_path), image_size=16, seed=0)
    assert ds.damage["incomplete_samples"] >= 1  # the orphan (and a sample the cut split)
    assert list(ds.damage["damaged_shards"]) == [str(tmp_path / "b.tar")]


def test_the_trainer_reports_skips_and_stops_on_too_many(
    tiny_train: dict, tmp_path: Path, png, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _table(tmp_path, png, good=12, missing=2, broken=1)
    summary = train(TrainConfig.from_dict({**tiny_train, "data": str(table), "out": str(tmp_path / "run"), "max_bad_fraction": 0.5}))
    assert summary["data"]["missing_files"] >= 2 and summary["data"]["skipped_images"] >= 1
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())["data"]
    assert saved == summary["data"]
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert int(rows[-1]["data/missing_files"]) == summary["data"]["missing_files"]
    out = capsys.readouterr().out
    assert "skipped" in out and "missing file" in out and "undecodable image" in out

    monkeypatch.setattr("lowbit.train.books.BAD_MIN_SAMPLES", 16)
    with pytest.raises(DataError, match=r"too much bad training data: .*missing file .*max_bad_fraction 0\.1"):
        train(TrainConfig.from_dict({**tiny_train, "data": str(table), "out": str(tmp_path / "bad")}))


def _prepared(tmp_path: Path, png) -> Path:
    root = tmp_path / "prep"
    root.mkdir()
    samples = [(f"{i:04d}", {"png": png((i * 20, 9, 9)), "txt": f"item {i}".encode(), "cls": b"0"}) for i in range(12)]
    files = {}
    for name, part in (("train-000000.tar", samples[:6]), ("train-000001.tar", samples[6:])):
        info = write_shard(root / name, part)
        files[name] = {k: info[k] for k in ("count", "bytes", "sha256")}
    manifest = {"format": FORMAT, "name": "t", "splits": {"train": {"count": 12, "shards": sorted(files)}}, "files": files}
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


@pytest.mark.parametrize(("damage", "message"), [("truncate", "has .* bytes, the manifest says .*truncated"),
                                                 ("flip", "does not match its SHA-256")])
def test_a_prepared_folder_is_checked_against_its_manifest(tiny_train: dict, tmp_path: Path, png, damage: str, message: str) -> None:
    root = _prepared(tmp_path, png)
    cfg = {**tiny_train, "data": str(root), "steps": 1}
    train(TrainConfig.from_dict({**cfg, "out": str(tmp_path / "ok")}))
    shard = root / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        shard.write_bytes(bytes(data[:-1024]))
    else:
        data[700] ^= 0xFF
        shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"train-000001\.tar {message}.*lowbit data verify"):
        train(TrainConfig.from_dict({**cfg, "out": str(tmp_path / "bad")}))
    assert not (tmp_path / "bad").exists()
