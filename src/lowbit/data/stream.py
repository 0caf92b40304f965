"""The infinite, deterministic, rank- and worker-sharded sample stream behind ``build_train_data``.

Positions. Every source defines a *global stream* ``s(0), s(1), ...`` that depends only on (source, seed).
Rank ``r`` of ``world_size`` ``W`` owns the global positions ``r, r + W, r + 2W, ...``; its ``k``-th sample is
``s(k * W + r)``. Ranks never share a position, and all ranks advance in lock-step (one sample each per
step), which is what DDP wants. ``start=N`` begins at the rank's ``N``-th sample, so a run resumed with
``start = samples already consumed by this rank`` continues exactly where it stopped.

Workers. Inside one rank, a ``DataLoader`` with ``num_workers = n`` gives each worker a copy of the dataset.
The rank's positions ``start, start+1, ...`` are cut into blocks of ``batch_size`` consecutive positions and
block ``m`` goes to worker ``m mod n``. The DataLoader collects batch ``i`` from worker ``i mod n``, so when
``batch_size`` equals the DataLoader's batch size, the batches come out in *exactly* the single-process
(``num_workers=0``) order, for any ``n``, and resuming stays exact. With another ``batch_size`` the workers
still split the positions without duplicates or gaps, only the order of samples within the rank differs.

Skips. ``dataset.stats`` counts skipped samples per reason (``STAT_KEYS``: undecodable image, missing or empty
caption, missing file); ``dataset.damage`` describes what was lost before reading began (``damaged_shards``:
path -> why the shard could only be read in part; ``incomplete_samples``: tar groups without an image or a
caption). Counters live in a small shared-memory tensor with
one row per process (main process + up to 63 workers), so the parent's ``stats`` includes what DataLoader
workers counted (fork or spawn). Each rank has its own counters (all-reduce them yourself under DDP).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

_SLOTS = 64
STAT_KEYS: tuple[str, ...] = ("skipped_images", "skipped_captions", "missing_files")


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class SampleStream(IterableDataset):
    """Base class: yields ``(image [3, S, S] float32, caption str)`` forever.

    Subclasses implement ``_produce(positions)``: global stream positions (a 1-D int64 array) → one
    ``(image, caption)`` per position, in order. ``uint8=True``: sources of stored (decoded) images yield their
    uint8 pixels instead, for the consumer to normalise with ``lowbit.data.normalize_uint8`` where the batch lands
    (the same float32 values; a quarter of the bytes through the DataLoader and to the GPU); sources that render
    float pixels (synthetic) yield float32 as before, so check the dtype.
    """

    chunk: int = 64  # positions handed to _produce at once (vectorised sources render a whole chunk)
    damage: dict[str, object]  # found before reading (damaged shards, incomplete samples); {} if none

    def __init__(
        self, *, image_size: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1, batch_size: int = 1,
        uint8: bool = False,
    ) -> None:
        super().__init__()
        self.uint8 = bool(uint8)
        self.image_size = _check_int("image_size", image_size, 1)
        self.seed = _check_int("seed", seed, -(2**63))
        self.start = _check_int("start", start, 0)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be < world_size, got rank={rank}, world_size={world_size}")
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self._counters = torch.zeros(_SLOTS, len(STAT_KEYS), dtype=torch.int64).share_memory_()
        self.damage = {}

    # ---- statistics -------------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        """Skip counters summed over this process and its DataLoader workers, one per ``STAT_KEYS`` reason."""
        totals = self._counters.sum(dim=0).tolist()
        return dict(zip(STAT_KEYS, (int(t) for t in totals)))

    def _count(self, name: str, n: int = 1) -> None:
        info = get_worker_info()
        slot = 0 if info is None else 1 + info.id % (_SLOTS - 1)
        self._counters[slot, STAT_KEYS.index(name)] += n

    # ---- positions --------------------------------------------------------------------------------------
    def local_positions(self) -> Iterator[int]:
        """This process's positions in the rank's stream (``k``: the rank's k-th sample), forever."""
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        b = self.batch_size
        block = worker
        while True:
            first = self.start + block * b
            yield from range(first, first + b)
            block += workers

    def global_positions(self) -> Iterator[int]:
        """Global stream positions of this process, forever (``k * world_size + rank``)."""
        w, r = self.world_size, self.rank
        for k in self.local_positions():
            yield k * w + r

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        buf: list[int] = []
        for q in self.global_positions():
            buf.append(q)
            if len(buf) == self.chunk:
                yield from self._produce(np.asarray(buf, dtype=np.int64))
                buf.clear()

    def _produce(self, positions: np.ndarray) -> Iterator[tuple[torch.Tensor, str]]:  # pragma: no cover
        raise NotImplementedError
