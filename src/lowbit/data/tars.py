"""WebDataset tar shards: brace/glob expansion, a header index for random access, reading and writing.

We read shards with the stdlib ``tarfile`` rather than ``webdataset``'s streaming pipeline: one pass over the
headers gives every sample's member offsets, after which any sample can be read with one ``seek`` + ``read``.
That is what makes the stream exactly resumable and shardable per rank/worker at the sample level (see
``stream``), with each process reading only its own samples. The layout is the standard WebDataset one:
members ``<key>.<ext>`` grouped by key (the path up to the first dot of the basename), images ``.jpg``,
``.jpeg``, ``.png`` or ``.webp``, caption ``.txt``, labels ``.cls`` (text integer); any reader, including
``webdataset.WebDataset``, reads the shards we write. Compressed tars (``.tar.gz``) are refused: they cannot be
read at random.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import os
import re
import tarfile
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lowbit.data.image import IMAGE_EXTENSIONS

_BRACE_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def braceexpand(pattern: str) -> list[str]:
    """Expand ``{a,b}`` alternatives and ``{000..009}`` ranges (zero padding kept), left to right."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth = 0
    for end in range(start, len(pattern)):
        if pattern[end] == "{":
            depth += 1
        elif pattern[end] == "}":
            depth -= 1
            if depth == 0:
                break
    else:
        raise ValueError(f"unbalanced braces in shard pattern {pattern!r}")
    inner, head, tail = pattern[start + 1 : end], pattern[:start], pattern[end + 1 :]
    match = _BRACE_RANGE.match(inner)
    if match:
        lo, hi = int(match.group(1)), int(match.group(2))
        width = len(match.group(1)) if match.group(1).lstrip("-").startswith("0") else 0
        step = 1 if hi >= lo else -1
        options = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    else:
        options, depth, last = [], 0, 0
        for i, ch in enumerate(inner):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                options.append(inner[last:i])
                last = i + 1
        options.append(inner[last:])
        options = [o for opt in options for o in braceexpand(opt)]
    return [h + t for opt in options for h in [head + opt] for t in braceexpand(tail)]


def expand_shards(spec: str) -> list[str]:
    """Shard paths of a pattern: ``::``-separated parts, braces, then globs; every path must exist."""
    paths: list[str] = []
    missing: list[str] = []
    for part in spec.split("::"):
        for item in braceexpand(os.path.expanduser(part)):
            if any(ch in item for ch in "*?["):
                found = sorted(glob.glob(item))
                if not found:
                    raise FileNotFoundError(f"no shard matches {item!r} (from data spec {spec!r})")
                paths.extend(found)
            elif os.path.isfile(item):
                paths.append(item)
            else:
                missing.append(item)
    if missing:
        shown = missing if len(missing) <= 4 else [*missing[:3], "...", missing[-1]]
        raise FileNotFoundError(f"{len(missing)} shard(s) of data spec {spec!r} not found: {', '.join(shown)}")
    if not paths:
        raise FileNotFoundError(f"data spec {spec!r} names no shard")
    return paths


def split_key(name: str) -> tuple[str, str]:
    """WebDataset member name → (key, extension): ``dir/000001.subcategory.cls`` → (``dir/000001``, ``subcategory.cls``)."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :].lower()


@dataclass
class ShardIndex:
    """Samples of one shard: member (offset, size) per extension, for samples with an image."""

    path: str
    keys: list[str]
    image: np.ndarray  # [n, 2] (offset, size) of the image member
    members: dict[str, np.ndarray]  # ext -> [n, 2], (-1, 0) where absent
    incomplete: int = 0  # groups without an image or a caption (dropped)
    error: str | None = None  # why the scan stopped early (truncated / unreadable tar)

    def __len__(self) -> int:
        return len(self.keys)


_MEMBERS_CACHE: dict[tuple[str, int, int], tuple[list[tuple[str, int, int]], str | None]] = {}


class _NeedTarfile(Exception):
    """The fast scanner met a header it does not handle (PAX, GNU long names, sparse files...)."""


def _scan_fast(path: str, file_size: int) -> tuple[list[tuple[str, int, int]], str | None]:
    """(name, data offset, size) of the regular files of a plain ustar/v7/GNU tar, reading headers only.

    Reads 256 KiB windows and jumps over large members, so small-member shards are read sequentially and
    big-image shards mostly seeked; several times faster than iterating ``tarfile``.
    """
    members: list[tuple[str, int, int]] = []
    pos, buf, buf_start = 0, b"", 0
    window = 1 << 18
    zero = b"\0" * 512
    with open(path, "rb") as f:
        while pos + 512 <= file_size:
            rel = pos - buf_start
            if rel < 0 or rel + 512 > len(buf):
                f.seek(pos)
                buf, buf_start, rel = f.read(window), pos, 0
                if len(buf) < 512:
                    return members, "truncated header"
            h = buf[rel : rel + 512]
            if h == zero:
                break
            try:
                want = int(h[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
            except ValueError as exc:
                raise _NeedTarfile from exc
            if want != sum(h) - sum(h[148:156]) + 256:
                if not members:
                    raise _NeedTarfile  # let tarfile produce the proper error
                return members, f"bad header checksum at byte {pos}"
            typeflag = h[156:157]
            raw_size = h[124:136]
            if raw_size[0] & 0x80:  # GNU base-256 size
                raise _NeedTarfile
            size = int(raw_size.split(b"\0", 1)[0].strip() or b"0", 8)
            if typeflag in (b"0", b"\0", b"7"):
                name = h[0:100].split(b"\0", 1)[0]
                if h[257:262] == b"ustar" and h[345] != 0:
                    name = h[345:500].split(b"\0", 1)[0] + b"/" + name
                if pos + 512 + size > file_size:
                    return members, f"member {name.decode('utf-8', 'replace')!r} is truncated"
                members.append((name.decode("utf-8", "surrogateescape"), pos + 512, size))
            elif typeflag not in (b"5", b"1", b"2", b"3", b"4", b"6"):  # x, g, L, K, S, ...: not for us
                raise _NeedTarfile
            pos += 512 + (size + 511) // 512 * 512
        else:
            return members, "no end-of-archive marker (truncated?)"
    return members, None


def _scan_tarfile(path: str, file_size: int) -> tuple[list[tuple[str, int, int]], str | None]:
    members: list[tuple[str, int, int]] = []
    try:
        with tarfile.open(path, mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                if m.offset_data + m.size > file_size:
                    return members, f"member {m.name!r} is truncated"
                members.append((m.name, m.offset_data, m.size))
    except (tarfile.TarError, OSError, EOFError) as exc:
        if not members:
            raise ValueError(f"{path!r} is not a readable tar shard ({type(exc).__name__}: {exc})") from exc
        return members, f"{type(exc).__name__}: {exc}"
    return members, None


def scan_members(path: str) -> tuple[list[tuple[str, int, int]], str | None]:
    """Regular-file members (name, data offset, size) of a tar and why reading stopped early (or None).

    Cached per (path, size, mtime). Compressed tars raise ``ValueError``.
    """
    st = os.stat(path)
    cache_key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if cache_key in _MEMBERS_CACHE:
        return _MEMBERS_CACHE[cache_key]
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00" or magic[:4] == b"(\xb5/\xfd":
        raise ValueError(f"shard {path!r} is compressed; lowbit reads uncompressed .tar shards (random access)")
    try:
        result = _scan_fast(path, st.st_size)
    except _NeedTarfile:
        result = _scan_tarfile(path, st.st_size)
    if len(_MEMBERS_CACHE) > 4096:
        _MEMBERS_CACHE.clear()
    _MEMBERS_CACHE[cache_key] = result
    return result


def index_shard(path: str, *, require: tuple[str, ...] = ("txt",)) -> ShardIndex:
    """Index a tar's samples (headers only): keep groups with an image and all ``require``d extensions.

    A truncated or damaged tar keeps the samples read before the damage and records ``error``.
    """
    members, error = scan_members(path)
    groups: OrderedDict[str, dict[str, tuple[int, int]]] = OrderedDict()
    for name, offset, size in members:
        k, ext = split_key(name)
        if ext:
            groups.setdefault(k, {}).setdefault(ext, (offset, size))
    keys: list[str] = []
    images: list[tuple[int, int]] = []
    extra: dict[str, list[tuple[int, int]]] = {}
    incomplete = 0
    for k, exts in groups.items():
        img = next((exts[e] for e in IMAGE_EXTENSIONS if e in exts), None)
        if img is None or any(r not in exts for r in require):
            incomplete += 1
            continue
        n = len(keys)
        keys.append(k)
        images.append(img)
        for ext, loc in exts.items():
            if ext not in IMAGE_EXTENSIONS:
                extra.setdefault(ext, [(-1, 0)] * n).append(loc)
        for col in extra.values():
            if len(col) < len(keys):
                col.append((-1, 0))
    members_arr = {ext: np.asarray(col, dtype=np.int64).reshape(-1, 2) for ext, col in extra.items()}
    image = np.asarray(images, dtype=np.int64).reshape(-1, 2)
    return ShardIndex(path, keys, image, members_arr, incomplete, error)


class FileCache:
    """Open read-only descriptors per process (LRU), read with ``os.pread`` (no shared file offset).

    Safe across ``fork``: a DataLoader worker that inherits the parent's descriptors notices the new pid and
    opens its own; pickling (spawn) drops them.
    """

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._pid = os.getpid()

    def read(self, path: str, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():  # forked: the inherited descriptors belong to the parent
            self._fds, self._pid = OrderedDict(), os.getpid()
        fd = self._fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            while len(self._fds) >= self.size:
                os.close(self._fds.popitem(last=False)[1])
        self._fds[path] = fd
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"short read in {path!r} at {offset}")
        return data

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

    def __getstate__(self) -> dict[str, int]:
        return {"size": self.size}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["size"])  # type: ignore[misc]


# ---- writing ------------------------------------------------------------------------------------------------
def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_shard(path: str | os.PathLike[str], samples: Iterable[tuple[str, dict[str, bytes]]]) -> dict[str, object]:
    """Write a WebDataset tar (members ``<key>.<ext>`` in the given order) reproducibly and atomically.

    Headers carry no time or owner, so the same samples give byte-identical shards (stable checksums).
    Returns ``{"name", "count", "bytes", "sha256"}``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for key, parts in samples:
            for ext, data in parts.items():
                tf.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))
            count += 1
    os.replace(tmp, path)
    return {"name": path.name, "count": count, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
