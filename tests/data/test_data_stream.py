"""Positions, ranks, resume and DataLoader workers: the stream contract the trainer relies on."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from lowbit.data import build_train_data
from lowbit.data.sources import EpochOrder


def _take(ds, n: int) -> list:
    return list(itertools.islice(iter(ds), n))


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))


@pytest.fixture
def tar_spec(make_shards) -> str:
    paths = make_shards(14, 5)  # 3 shards of 5, 5, 4 samples
    return str(paths[0].parent / "shard-{000..002}.tar")


@pytest.mark.parametrize("kind", ["synthetic", "tar"])
def test_ranks_interleave_the_global_stream_without_overlap(kind: str, tar_spec: str) -> None:
    spec = "synthetic" if kind == "synthetic" else tar_spec
    whole = _take(build_train_data(spec, image_size=16, seed=5), 42)
    for r in range(3):
        part = _take(build_train_data(spec, image_size=16, seed=5, rank=r, world_size=3), 14)
        assert _same(part, whole[r::3])


def test_each_epoch_is_a_fresh_permutation(tar_spec: str) -> None:
    caps = [c for _, c in _take(build_train_data(tar_spec, image_size=16, seed=1), 42)]
    epochs = [caps[i : i + 14] for i in range(0, 42, 14)]
    for e in epochs:
        assert sorted(e) == sorted(f"sample {i}" for i in range(14))
    assert len({tuple(e) for e in epochs}) == 3  # reshuffled every epoch
    other = [c for _, c in _take(build_train_data(tar_spec, image_size=16, seed=2), 14)]
    assert other != epochs[0]  # the seed matters


@pytest.mark.parametrize("kind", ["synthetic", "tar"])
def test_start_resumes_exactly(kind: str, tar_spec: str) -> None:
    spec = "synthetic" if kind == "synthetic" else tar_spec
    whole = _take(build_train_data(spec, image_size=16, seed=3, rank=1, world_size=2), 30)
    for start in (1, 7, 13, 22):  # mid-epoch and across epoch boundaries
        resumed = _take(build_train_data(spec, image_size=16, seed=3, start=start, rank=1, world_size=2), 30 - start)
        assert _same(resumed, whole[start:])


def _loader(spec: str, workers: int, batch: int, block: int, start: int = 0) -> list:
    ds = build_train_data(spec, image_size=16, seed=0, batch_size=block, start=start)
    dl = DataLoader(ds, batch_size=batch, num_workers=workers)
    return [(x, list(c)) for x, c in itertools.islice(dl, 6)]


def test_workers_reproduce_the_single_process_order(tar_spec: str) -> None:
    for spec in ("synthetic", tar_spec):
        single = _loader(spec, 0, 4, 4)
        multi = _loader(spec, 2, 4, 4)
        assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(single, multi))
        resumed = _loader(spec, 2, 4, 4, start=8)  # 2 batches consumed, resumed with workers
        assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(single[2:], resumed))


def test_workers_split_positions_without_duplicates_when_blocks_differ(tar_spec: str) -> None:
    """batch_size=1 (default) with a batched loader: worker w takes positions w, w+2, ...: no duplicates."""
    caps = [c for _, cs in _loader(tar_spec, 2, 7, 1)[:2] for c in cs]  # 14 samples = one epoch
    assert Counter(caps) == Counter(f"sample {i}" for i in range(14))


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="rank"):
        build_train_data("synthetic", image_size=16, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="start"):
        build_train_data("synthetic", image_size=16, seed=0, start=-1)
    with pytest.raises(ValueError, match="world_size"):
        build_train_data("synthetic", image_size=16, seed=0, world_size=0)
    with pytest.raises(TypeError, match="image_size"):
        build_train_data("synthetic", image_size=16.0, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image_size"):
        build_train_data("synthetic", image_size=0, seed=0)


def test_workers_forked_after_the_parent_read_the_shards(tar_spec: str) -> None:
    """Inherited descriptors must not be shared by forked workers (no shared file offsets)."""
    ds = build_train_data(tar_spec, image_size=16, seed=0, batch_size=2)
    first = _take(ds, 14)  # the parent opens the shards
    dl = DataLoader(ds, batch_size=2, num_workers=2)
    again = [(x[i], c[i]) for x, c in itertools.islice(dl, 7) for i in range(2)]
    assert _same(again, first)


@given(
    counts=st.lists(st.integers(0, 40), min_size=1, max_size=8).filter(lambda c: sum(c) > 0),
    span=st.integers(1, 64),
    epoch=st.integers(0, 5),
)
def test_epoch_order_is_a_permutation(counts: list[int], span: int, epoch: int) -> None:
    """Whatever the shard sizes (empty ones included) and shuffle span, an epoch visits every sample once."""
    order = EpochOrder(counts, seed=7, span=span)
    ids = [order(epoch, p) for p in range(sum(counts))]
    assert sorted(ids) == list(range(sum(counts)))
