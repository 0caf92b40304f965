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

Consumed, not read. DataLoader workers read ahead (``prefetch_factor`` batches each), so ``stats`` includes
samples no step has used yet. ``consumed_stats(position)`` counts only the skips behind the positions before
``position``: every skip is also booked in a shared ring of per-block counters (block = ``batch_size``
consecutive positions of the rank, the unit a worker produces), which the consumer drains in order. The run's
bad-sample fraction and its per-step counts are therefore the same for every number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

_SLOTS = 64
_RING = 1024  # blocks whose skip counts wait for the consumer: more than any worker reads ahead (prefetch x workers)
STAT_KEYS: tuple[str, ...] = ("skipped_images", "skipped_captions", "missing_files", "skipped_large_images")


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
        self._ring = torch.zeros(_RING, len(STAT_KEYS), dtype=torch.int64).share_memory_()
        self._block = 0  # the block of positions this process is producing (producer side)
        self._drained = 0  # blocks drained from the ring (consumer side)
        self._consumed = [0] * len(STAT_KEYS)
        self.damage = {}

    # ---- statistics -------------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        """Skip counters summed over this process and its DataLoader workers, one per ``STAT_KEYS`` reason."""
        totals = self._counters.sum(dim=0).tolist()
        return dict(zip(STAT_KEYS, (int(t) for t in totals)))

    def consumed_stats(self, position: int) -> dict[str, int]:
        """Skip counters of the samples before the rank's ``position`` (samples consumed, ``start`` included):
        only what the consumer used, not what workers read ahead. Call from the consuming process with
        non-decreasing positions at whole blocks (``batch_size``)."""
        blocks = max(0, position - self.start) // self.batch_size
        for b in range(self._drained, blocks):
            row = self._ring[b % _RING]
            self._consumed = [c + int(v) for c, v in zip(self._consumed, row.tolist())]
            row.zero_()
        self._drained = max(self._drained, blocks)
        return dict(zip(STAT_KEYS, self._consumed))

    def _count(self, name: str, n: int = 1) -> None:
        info = get_worker_info()
        slot = 0 if info is None else 1 + info.id % (_SLOTS - 1)
        self._counters[slot, STAT_KEYS.index(name)] += n
        self._ring[self._block % _RING, STAT_KEYS.index(name)] += n

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
        w, r = self.world_size, self.rank
        for k in self.local_positions():
            if not buf:  # skips are booked to the block of the chunk's first position (sources that skip: chunk 1)
                self._block = (k - self.start) // self.batch_size
            buf.append(k * w + r)
            if len(buf) == self.chunk:
                yield from self._produce(np.asarray(buf, dtype=np.int64))
                buf.clear()

    def _produce(self, positions: np.ndarray) -> Iterator[tuple[torch.Tensor, str]]:  # pragma: no cover
        raise NotImplementedError
