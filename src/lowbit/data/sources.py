"""Finite sources (tar shards, CSV/TSV tables) as infinite, epoch-shuffled streams.

Epoch order (deterministic in (seed, epoch), never in the process): the shard order is permuted; shards are
grouped, in that order, into spans of about ``SHUFFLE_SPAN`` samples; samples are permuted within each span.
For data sets up to ``SHUFFLE_SPAN`` samples (every prepared data set here) that is a full shuffle; for large
web-scale shard sets each process touches a few shards at a time instead of all of them. Every epoch is a
permutation of the whole source, so each sample appears once per epoch in the global stream.

Corrupt samples (undecodable image, caption not UTF-8 or empty, unreadable or missing file) are counted per
reason in ``stats`` (the first few paths of each reason are kept for error messages) and replaced by the next
decodable sample of the same epoch order, so the stream keeps one sample per position:
ranks stay in lock-step and ``start`` stays exact; the price is that a replacement repeats a neighbour.
"""

from __future__ import annotations

import bisect
import csv
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lowbit.data import _rng
from lowbit.data.image import ImageTooLarge, decode_image
from lowbit.data.stream import SampleStream
from lowbit.data.tars import FileCache, ShardIndex

SHUFFLE_SPAN = 1 << 17
MAX_CONSECUTIVE_BAD = 1000


class SkipSample(Exception):
    """A sample that cannot be used; ``kind`` is the stats counter to bump."""

    def __init__(self, kind: str, why: str) -> None:
        super().__init__(why)
        self.kind = kind


class EpochOrder:
    """Maps (epoch, position in epoch) → sample id for blocks (shards) of given sizes."""

    def __init__(self, counts: list[int], seed: int, span: int = SHUFFLE_SPAN) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.total = int(self.offsets[-1])
        self.seed, self.span = seed, span
        self._epoch: int | None = None
        self._group_cache: tuple[int, np.ndarray] | None = None

    def _setup_epoch(self, epoch: int) -> None:
        order = _rng.permutation(len(self.counts), self.seed, "blocks", epoch)
        counts = self.counts[order]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        gid = np.unique(starts // self.span, return_inverse=True)[1]
        self._blocks = order  # blocks in epoch order
        self._block_starts = starts  # their start positions in the epoch
        bounds = np.searchsorted(gid, np.arange(gid.max() + 2), side="left")  # block range of each group
        self._group_first_block = bounds[:-1]
        self._group_start = np.concatenate([starts, [self.total]])[bounds]  # positions: group g = [s[g], s[g+1])
        self._epoch = epoch
        self._group_cache = None

    def __call__(self, epoch: int, p: int) -> int:
        """The sample id at position ``p`` (0 ≤ p < total) of ``epoch``."""
        if epoch != self._epoch:
            self._setup_epoch(epoch)
        g = int(np.searchsorted(self._group_start, p, side="right")) - 1
        if self._group_cache is None or self._group_cache[0] != g:
            n = int(self._group_start[g + 1] - self._group_start[g])
            self._group_cache = (g, _rng.permutation(n, self.seed, "samples", epoch, g))
        local = int(self._group_cache[1][p - self._group_start[g]])  # position within the group
        pos = int(self._group_start[g]) + local
        b = int(np.searchsorted(self._block_starts, pos, side="right")) - 1
        return int(self.offsets[self._blocks[b]] + (pos - self._block_starts[b]))


class FiniteStream(SampleStream):
    """An epoch-shuffled stream over a finite source; subclasses implement ``load(sample_id)``."""

    chunk = 1

    def __init__(self, counts: list[int], max_image_pixels: int | None = None, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.max_image_pixels = max_image_pixels  # larger images are skipped unread (load_image)
        self.examples: dict[str, list[str]] = {}  # reason -> first few "what: why" (this process only)
        self.total = int(sum(counts))
        if self.total == 0:
            raise ValueError(f"{self.describe_source()} holds no usable sample")
        self.order = EpochOrder(counts, self.seed)

    def describe_source(self) -> str:
        return type(self).__name__

    def load(self, sample_id: int) -> tuple[torch.Tensor, str]:  # pragma: no cover
        raise NotImplementedError

    def _produce(self, positions: np.ndarray) -> Iterator[tuple[torch.Tensor, str]]:
        for q in positions.tolist():
            epoch, p = divmod(q, self.total)
            for attempt in range(min(self.total, MAX_CONSECUTIVE_BAD)):
                try:
                    yield self.load(self.order(epoch, (p + attempt) % self.total))
                    break
                except SkipSample as skip:
                    self._count(skip.kind)
                    seen = self.examples.setdefault(skip.kind, [])
                    if len(seen) < 3:
                        seen.append(str(skip))
            else:
                n = min(self.total, MAX_CONSECUTIVE_BAD)
                raise ValueError(f"{self.describe_source()}: no usable sample among {n} consecutive ones: "
                                 + describe_examples(self.stats, self.examples))


_REASONS = {"skipped_images": "undecodable image(s)", "skipped_captions": "missing or empty caption(s)",
            "missing_files": "missing file(s)", "skipped_large_images": "image(s) above --max-image-pixels"}


def describe_examples(stats: dict[str, int], examples: dict[str, list[str]]) -> str:
    """``"12 missing file(s) (e.g. /a.jpg, /b.jpg); 3 undecodable image(s) (e.g. ...)"``."""
    parts = []
    for kind, n in stats.items():
        if n:
            eg = examples.get(kind) or []
            parts.append(f"{n} {_REASONS.get(kind, kind)}" + (f" (e.g. {'; '.join(eg)})" if eg else ""))
    return "; ".join(parts) or "no sample was read"


def read_caption(data: bytes) -> str:
    """Caption bytes → text; raises SkipSample if not UTF-8 or empty."""
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise SkipSample("skipped_captions", "caption is not UTF-8") from exc
    if not text:
        raise SkipSample("skipped_captions", "empty caption")
    return text


_STREAM_REPR = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def load_image(data: bytes | str, image_size: int, uint8: bool = False, max_pixels: int | None = None) -> torch.Tensor:
    """Decode (``uint8``: to uint8 pixels, see ``decode_image``) or raise SkipSample: "skipped_large_images" above
    ``max_pixels``, else "skipped_images"."""
    try:
        return decode_image(data, image_size, uint8=uint8, max_pixels=max_pixels)
    except ImageTooLarge as exc:
        raise SkipSample("skipped_large_images", str(exc)) from exc
    except Exception as exc:  # PIL raises many types for bad data; all mean "skip"
        why = _STREAM_REPR.sub("", str(exc))  # PIL names the in-memory stream, not the sample: the caller does
        raise SkipSample("skipped_images", f"{type(exc).__name__}: {why}") from exc


class ShardReader:
    """Random access to the samples of several indexed shards (global sample id = running count)."""

    def __init__(self, shards: list[ShardIndex]) -> None:
        self.shards = shards
        self.offsets = [0]
        for s in shards:
            self.offsets.append(self.offsets[-1] + len(s))
        self.files = FileCache()

    @property
    def counts(self) -> list[int]:
        return [len(s) for s in self.shards]

    def locate(self, sample_id: int) -> tuple[ShardIndex, int]:
        b = bisect.bisect_right(self.offsets, sample_id) - 1
        return self.shards[b], sample_id - self.offsets[b]

    def image_bytes(self, sample_id: int) -> bytes:
        shard, i = self.locate(sample_id)
        off, size = shard.image[i]
        try:
            return self.files.read(shard.path, int(off), int(size))
        except OSError as exc:
            raise SkipSample("skipped_images", str(exc)) from exc

    def member(self, sample_id: int, ext: str) -> bytes | None:
        shard, i = self.locate(sample_id)
        col = shard.members.get(ext)
        if col is None or col[i, 0] < 0:
            return None
        return self.files.read(shard.path, int(col[i, 0]), int(col[i, 1]))


def _why_empty(shard: ShardIndex) -> str:
    """Why a shard gave no sample: an empty file, a cut header, or members without image + caption."""
    try:
        size = os.path.getsize(shard.path)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if size == 0:
        return "empty file (0 bytes)"
    if shard.error:
        return f"{shard.error} ({size:,} bytes)"
    return f"no sample with an image and a caption ({shard.incomplete} incomplete)"


class TarStream(FiniteStream):
    """Training stream over WebDataset shards (image + ``.txt``)."""

    def __init__(self, shards: list[ShardIndex], name: str, **kwargs: int) -> None:
        """``shards`` may include some without a sample (empty, cut inside the first header): they are left out
        of the stream and listed in ``damage["empty_shards"]`` (path -> why), never dropped without a word."""
        kept = [s for s in shards if len(s)]
        self.reader, self.name = ShardReader(kept), name
        super().__init__(self.reader.counts, **kwargs)
        damaged = {s.path: s.error for s in kept if s.error}
        empty = {s.path: _why_empty(s) for s in shards if not len(s)}
        incomplete = sum(s.incomplete for s in shards)
        self.damage = {**({"damaged_shards": damaged} if damaged else {}),
                       **({"empty_shards": empty} if empty else {}),
                       **({"incomplete_samples": incomplete} if incomplete else {})}

    def describe_source(self) -> str:
        return f"shards {self.name!r}"

    def load(self, sample_id: int) -> tuple[torch.Tensor, str]:
        try:
            try:
                text = self.reader.member(sample_id, "txt")
            except OSError as exc:
                raise SkipSample("skipped_captions", str(exc)) from exc
            caption = read_caption(text or b"")
            image = load_image(self.reader.image_bytes(sample_id), self.image_size, self.uint8, self.max_image_pixels)
        except SkipSample as skip:  # name the sample: shard and key
            shard, i = self.reader.locate(sample_id)
            raise SkipSample(skip.kind, f"{shard.path} key {shard.keys[i]}: {skip}") from skip.__cause__
        return image, caption


# ---- CSV / TSV -------------------------------------------------------------------------------------------------
_COLUMN_PAIRS = (("filepath", "caption"), ("image", "text"), ("image", "caption"), ("filepath", "text"))


@dataclass
class Table:
    """Rows of a CSV/TSV file: absolute image paths and captions."""

    path: str
    columns: tuple[str, str]
    images: list[str]
    captions: list[str]


def read_table(path: str) -> Table:
    """Read ``.csv`` (comma) / ``.tsv`` (tab) with a header naming filepath/caption or image/text columns."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"table {path!r} not found")
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    base = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        cols = next(((a, b) for a, b in _COLUMN_PAIRS if a in header and b in header), None)
        if cols is None:
            raise ValueError(
                f"table {path!r} needs a header with columns filepath+caption or image+text; found {header}"
            )
        original = {h.strip().lower(): h for h in reader.fieldnames or []}
        images, captions = [], []
        for row in reader:
            img = (row.get(original[cols[0]]) or "").strip()
            if not img:
                continue
            images.append(img if os.path.isabs(img) else os.path.join(base, img))
            captions.append(row.get(original[cols[1]]) or "")
    if not images:
        raise ValueError(f"table {path!r} has no rows")
    return Table(path, cols, images, captions)


class TableStream(FiniteStream):
    """Training stream over a CSV/TSV table of image files and captions."""

    CHECK_FIRST = 256  # rows whose image files are looked for up front

    def __init__(self, table: Table, **kwargs: int) -> None:
        self.table = table
        super().__init__([len(table.images)], **kwargs)
        head = table.images[: self.CHECK_FIRST]
        missing = [p for p in head if not os.path.isfile(p)]
        if len(missing) == len(head):
            shown = ", ".join(repr(p) for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise FileNotFoundError(
                f"table {table.path!r}: none of the image files of its first {len(head)} row(s) exists ({shown}); "
                f"relative paths resolve against the table's folder {os.path.dirname(os.path.abspath(table.path))!r}"
            )

    def describe_source(self) -> str:
        return f"table {self.table.path!r}"

    def load(self, sample_id: int) -> tuple[torch.Tensor, str]:
        caption = read_caption(self.table.captions[sample_id].encode("utf-8", "surrogateescape"))
        path = self.table.images[sample_id]
        try:
            return load_image(path, self.image_size, self.uint8, self.max_image_pixels), caption
        except SkipSample as skip:
            if isinstance(skip.__cause__, FileNotFoundError):
                raise SkipSample("missing_files", path) from skip.__cause__
            raise SkipSample(skip.kind, f"{path}: {skip}") from skip.__cause__
