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

import glob
import hashlib
import io
import os
import re
import tarfile
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
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
    for part in spec.split("::"):
        for item in braceexpand(os.path.expanduser(part)):
            if any(ch in item for ch in "*?["):
                found = sorted(glob.glob(item))
                if not found:
                    raise FileNotFoundError(f"no shard matches {item!r} (from data spec {spec!r})")
                paths.extend(found)
            else:
                if not os.path.isfile(item):
                    raise FileNotFoundError(f"shard {item!r} not found (from data spec {spec!r})")
                paths.append(item)
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


@dataclass
class _Group:
    key: str
    exts: dict[str, tuple[int, int]] = field(default_factory=dict)


_INDEX_CACHE: dict[tuple[str, int, int, tuple[str, ...]], ShardIndex] = {}


def index_shard(path: str, *, require: tuple[str, ...] = ("txt",)) -> ShardIndex:
    """Scan a tar's headers (no data read); keep groups with an image and all ``require``d extensions.

    Cached per (path, size, mtime). A truncated or damaged tar keeps the samples read before the damage and
    records ``error``; a compressed tar raises ``ValueError``.
    """
    st = os.stat(path)
    cache_key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, require)
    if cache_key in _INDEX_CACHE:
        return _INDEX_CACHE[cache_key]
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00" or magic[:4] == b"(\xb5/\xfd":
        raise ValueError(f"shard {path!r} is compressed; lowbit reads uncompressed .tar shards (random access)")
    groups: OrderedDict[str, _Group] = OrderedDict()
    error = None
    try:
        with tarfile.open(path, mode="r:") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > st.st_size:
                    error = f"member {member.name!r} is truncated"
                    break
                k, ext = split_key(member.name)
                if not ext:
                    continue
                groups.setdefault(k, _Group(k)).exts.setdefault(ext, (member.offset_data, member.size))
    except (tarfile.TarError, OSError, EOFError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        if not groups:
            raise ValueError(f"{path!r} is not a readable tar shard ({error})") from exc
    keys: list[str] = []
    images: list[tuple[int, int]] = []
    extra: dict[str, list[tuple[int, int]]] = {}
    incomplete = 0
    for g in groups.values():
        img = next((g.exts[e] for e in IMAGE_EXTENSIONS if e in g.exts), None)
        if img is None or any(r not in g.exts for r in require):
            incomplete += 1
            continue
        n = len(keys)
        keys.append(g.key)
        images.append(img)
        for ext, loc in g.exts.items():
            if ext in IMAGE_EXTENSIONS:
                continue
            col = extra.setdefault(ext, [(-1, 0)] * n)
            col.append(loc)
        for col in extra.values():
            if len(col) < len(keys):
                col.append((-1, 0))
    members = {ext: np.asarray(col, dtype=np.int64).reshape(-1, 2) for ext, col in extra.items()}
    image = np.asarray(images, dtype=np.int64).reshape(-1, 2)
    result = ShardIndex(path, keys, image, members, incomplete, error)
    _INDEX_CACHE[cache_key] = result
    return result


class FileCache:
    """Open read handles per process (LRU); dropped on pickling so DataLoader workers open their own."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._files: OrderedDict[str, io.BufferedReader] = OrderedDict()

    def read(self, path: str, offset: int, size: int) -> bytes:
        f = self._files.pop(path, None)
        if f is None:
            f = open(path, "rb")  # noqa: SIM115 - kept open on purpose (LRU)
            while len(self._files) >= self.size:
                self._files.popitem(last=False)[1].close()
        self._files[path] = f
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise OSError(f"short read in {path!r} at {offset}")
        return data

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
