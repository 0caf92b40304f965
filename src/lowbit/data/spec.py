"""Data spec strings → training streams, zero-shot tasks and descriptions.

Spec strings (``--data`` / ``--zeroshot`` of the trainer):

``synthetic`` or ``synthetic:key=value,...``
    The built-in procedural shapes data (default). Keys: ``seed_offset`` (int, added to the seed: another
    stream with the same trainer seed), ``max_objects`` (1–3, default 3), ``p_multi`` (probability of a
    multi-object scene, default 0.2), ``p_center`` (extra probability that a single object sits in the
    centre cell, default 0), ``noise`` (pixel noise amplitude, default 0.05), ``eval_n`` (held-out
    images per zero-shot task, default 512), ``tasks`` (``+``-separated zero-shot tasks, default all of
    shape+colour+size+position+texture+background+colour_shape).
a directory written by ``lowbit data prepare``
    ``manifest.json`` + tar shards + ``zeroshot.json``: training reads the ``train`` split, zero-shot the task
    file and the test shards.
WebDataset shards
    a ``.tar`` path, a glob (``shards/*.tar``), braces (``shards/{000..009}.tar``), ``::``-joined patterns, or
    a directory holding ``.tar`` files. Members ``<key>.jpg|jpeg|png|webp`` + ``<key>.txt``.
a ``.csv`` / ``.tsv`` table
    header with ``filepath``/``caption`` (or ``image``/``text``) columns; relative paths resolve against the
    table's folder.
an image folder (zero-shot only)
    ``root/<class>/*.jpg``; class names from folder names with ``_`` → space, CLIP-style default templates.

``--zeroshot auto`` (the trainer's default) resolves through ``zeroshot_spec``: a prepared ``--data`` directory
brings its own zero-shot tasks; any other training data is evaluated on the synthetic tasks.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from torch.utils.data import Dataset, IterableDataset

from lowbit.data.image import check_image_size
from lowbit.data.sources import TableStream, read_table
from lowbit.data.sources import TarStream as _TarStream
from lowbit.data.synthetic import (
    ATTRIBUTES,
    TASK_TEMPLATES,
    SyntheticConfig,
    SyntheticStream,
    SyntheticTaskDataset,
    task_classnames,
)
from lowbit.data.tars import ShardIndex, expand_shards, index_shard
from lowbit.data.zeroshot import (
    DEFAULT_TEMPLATES,
    ImageFolderDataset,
    ShardTaskDataset,
    ZeroShotTask,
    folder_classname,
    read_task_file,
    scan_image_folder,
    subset,
)

MANIFEST = "manifest.json"
FORMAT = "lowbit-webdataset/1"


# ---- spec parsing ------------------------------------------------------------------------------------------
def parse_synthetic(spec: str) -> SyntheticConfig:
    """``synthetic[:k=v,...]`` → SyntheticConfig (unknown keys and bad values raise ValueError)."""
    _, _, params = spec.partition(":")
    fields = {f.name: f for f in dataclasses.fields(SyntheticConfig)}
    values: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in params.split(","))):
        name, eq, raw = item.partition("=")
        name = name.strip()
        if not eq or name not in fields:
            raise ValueError(f"bad synthetic parameter {item!r} in {spec!r}; known: {', '.join(fields)}")
        try:
            if name == "tasks":
                values[name] = tuple(t for t in raw.replace(",", "+").split("+") if t)
            elif name in ("p_multi", "p_center", "noise"):
                values[name] = float(raw)
            else:
                values[name] = int(raw)
        except ValueError as exc:
            raise ValueError(f"bad value for synthetic parameter {name!r}: {raw!r}") from exc
    return SyntheticConfig(**values)


def _kind(spec: str) -> str:
    """Classify a spec: synthetic, prepared, shards, table or imagefolder (raises for the rest)."""
    if not isinstance(spec, str | os.PathLike):
        raise TypeError(f"data spec must be a string, got {type(spec).__name__}")
    spec = os.fspath(spec)
    if not spec.strip():
        raise ValueError("empty data spec")
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return "synthetic"
    low = spec.lower()
    if os.path.isdir(spec):
        if os.path.isfile(os.path.join(spec, MANIFEST)):
            return "prepared"
        names = os.listdir(spec)
        if any(n.lower().endswith(".tar") for n in names):
            return "shards"
        if any(os.path.isdir(os.path.join(spec, n)) for n in names):
            return "imagefolder"
        raise ValueError(
            f"directory {spec!r} is neither a prepared data set (no {MANIFEST}), nor holds .tar shards, "
            "nor class folders of images"
        )
    if low.endswith((".csv", ".tsv")):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"table {spec!r} not found")
        return "table"
    if "{" in spec or "::" in spec or any(c in spec for c in "*?[") or low.endswith(".tar"):
        return "shards"
    if low.endswith((".tar.gz", ".tgz")):
        raise ValueError(f"{spec!r}: compressed tars cannot be read at random; decompress to .tar")
    if not os.path.exists(spec):
        raise FileNotFoundError(
            f"data spec {spec!r}: no such file or directory (expected 'synthetic', a prepared directory, "
            ".tar shards, or a .csv/.tsv table)"
        )
    raise ValueError(f"unknown data spec {spec!r} (expected 'synthetic', a prepared directory, .tar shards, .csv/.tsv)")


def _shard_paths(spec: str) -> list[str]:
    if os.path.isdir(spec):
        return sorted(os.path.join(spec, n) for n in os.listdir(spec) if n.lower().endswith(".tar"))
    return expand_shards(spec)


def read_manifest(root: str) -> dict[str, Any]:
    """The manifest of a prepared directory (checked for format and listed shards)."""
    path = os.path.join(root, MANIFEST)
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a lowbit data manifest (format {FORMAT!r})")
    for split, info in manifest.get("splits", {}).items():
        for name in info.get("shards", []):
            if not os.path.isfile(os.path.join(root, name)):
                raise FileNotFoundError(f"shard {name!r} of split {split!r} listed in {path!r} is missing")
    return manifest


def _prepared_shards(root: str, manifest: dict[str, Any], split: str) -> list[str]:
    info = manifest.get("splits", {}).get(split)
    if not info or not info.get("shards"):
        raise ValueError(f"prepared data set {root!r} has no {split!r} split")
    return [os.path.join(root, n) for n in info["shards"]]


def _index(paths: list[str], spec: str, require: tuple[str, ...] = ("txt",), keep_empty: bool = False) -> list[ShardIndex]:
    """Index every shard; ``ValueError`` if none holds a sample. ``keep_empty``: shards without one stay in the list
    (``TarStream`` reports them), else they are left out."""
    every = [index_shard(p, require=require) for p in paths]
    shards = [s for s in every if len(s)]
    if not shards:
        need = " + ".join(("image", *(f".{r}" for r in require)))
        raise ValueError(f"data spec {spec!r}: no sample with {need} in {len(paths)} shard(s)")
    return every if keep_empty else shards


def zeroshot_spec(zeroshot: str, data: str) -> str:
    """The zero-shot spec the trainer evaluates: ``zeroshot`` itself, unless it is ``auto``.

    ``auto``: a directory written by ``lowbit data prepare`` given as the training ``data`` brings its own
    zero-shot tasks (its ``zeroshot.json`` and test split); anything else falls back to ``synthetic``. Only looks
    for the manifest, so a bad ``data`` spec is reported by ``build_train_data``, not here.
    """
    if zeroshot != "auto":
        return zeroshot
    data = os.fspath(data) if isinstance(data, str | os.PathLike) else ""
    path = os.path.join(data, MANIFEST)
    if data and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            return data  # let build_zeroshot report the broken manifest
        if (manifest.get("zeroshot") or {}).get("file"):
            return data
    return "synthetic"


def train_command(data: str) -> str:
    """A complete ``lowbit train`` command for a prepared directory (printed by ``lowbit data prepare``)."""
    import shlex

    name = os.path.basename(os.path.normpath(os.fspath(data))) or "data"
    return f"lowbit train --data {shlex.quote(os.fspath(data))} --out {shlex.quote(os.path.join('runs', name))}"


# ---- public API --------------------------------------------------------------------------------------------
def build_train_data(
    spec: str,
    *,
    image_size: int,
    seed: int,
    start: int = 0,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 1,
    uint8: bool = False,
    max_image_pixels: int | None = None,
) -> IterableDataset:
    """Infinite, deterministic training stream of ``(image [3, S, S] float32 CLIP-normalised, caption)``
    (``uint8``: stored images as uint8 pixels, to be normalised where the batch lands; see ``SampleStream``).

    ``start``: samples this rank already consumed (exact resume). ``rank``/``world_size``: rank ``r`` gets
    global positions ``r, r+W, ...``. ``batch_size``: pass the DataLoader's batch size so that with
    ``num_workers > 0`` the batches come out in exactly the ``num_workers=0`` order (see ``lowbit.data.stream``).
    ``max_image_pixels``: stored images with more pixels are skipped unread (counted as ``skipped_large_images``).
    Skip counters: ``dataset.stats``.
    """
    check_image_size(image_size)
    kind = _kind(spec)
    spec = os.fspath(spec)
    common = dict(image_size=image_size, seed=seed, start=start, rank=rank, world_size=world_size, batch_size=batch_size,
                  uint8=uint8)
    if kind == "synthetic":
        return SyntheticStream(parse_synthetic(spec), **common)
    if kind == "prepared":
        manifest = read_manifest(spec)
        return _TarStream(_index(_prepared_shards(spec, manifest, "train"), spec, keep_empty=True), spec,
                          max_image_pixels=max_image_pixels, **common)
    if kind == "shards":
        return _TarStream(_index(_shard_paths(spec), spec, keep_empty=True), spec, max_image_pixels=max_image_pixels,
                          **common)
    if kind == "table":
        return TableStream(read_table(spec), max_image_pixels=max_image_pixels, **common)
    raise ValueError(f"{spec!r} is an image folder: usable for zero-shot evaluation, not as training data")


def build_zeroshot(
    spec: str, *, image_size: int, seed: int = 0, limit: int | None = None
) -> list[tuple[ZeroShotTask, Dataset]]:
    """Zero-shot tasks with their labelled datasets (``(image, label index into task.classnames)``).

    ``limit``: at most that many images per task (a seeded random subset, kept in order).
    """
    check_image_size(image_size)
    kind = _kind(spec)
    spec = os.fspath(spec)
    out: list[tuple[ZeroShotTask, Dataset]] = []
    if kind == "synthetic":
        cfg = parse_synthetic(spec)
        n = cfg.eval_n if limit is None else min(cfg.eval_n, limit)
        for name in cfg.tasks:
            task = ZeroShotTask(name, task_classnames(name), list(TASK_TEMPLATES[name]))
            out.append((task, SyntheticTaskDataset(name, n, image_size=image_size, seed=seed, config=cfg)))
        return out
    if kind == "prepared":
        manifest = read_manifest(spec)
        zs = manifest.get("zeroshot") or {}
        if not zs.get("file"):
            raise ValueError(f"prepared data set {spec!r} has no zero-shot task file")
        for entry in read_task_file(os.path.join(spec, zs["file"])):
            task = ZeroShotTask(str(entry["name"]), list(entry["classnames"]), list(entry["templates"]))
            label = str(entry.get("label", "cls"))
            shards = _index(_prepared_shards(spec, manifest, str(entry.get("split", "test"))), spec, require=(label,))
            total = sum(len(s) for s in shards)
            ids = subset(total, limit, seed, task.name)
            ds = ShardTaskDataset(shards, label, len(task.classnames), image_size=image_size, ids=ids)
            if len(ds) == 0:
                raise ValueError(f"zero-shot task {task.name!r} of {spec!r} has no labelled image")
            out.append((task, ds))
        return out
    if kind == "imagefolder":
        folders, files, labels = scan_image_folder(spec)
        if not files:
            raise ValueError(f"image folder {spec!r} has no images in class sub-folders")
        name = os.path.basename(os.path.normpath(spec)) or "imagefolder"
        task = ZeroShotTask(name, [folder_classname(f) for f in folders], list(DEFAULT_TEMPLATES))
        ids = subset(len(files), limit, seed, name).tolist()
        ds = ImageFolderDataset([files[i] for i in ids], [labels[i] for i in ids], image_size=image_size)
        return [(task, ds)]
    raise ValueError(
        f"{spec!r} ({kind}) has no zero-shot tasks; use 'synthetic', a prepared directory, or an image folder"
    )


def describe(spec: str) -> dict[str, Any]:
    """What a spec resolves to (kind, paths, shard and sample counts, tasks): for logs and summary.json."""
    kind = _kind(spec)
    spec = os.fspath(spec)
    info: dict[str, Any] = {"spec": spec, "kind": kind}
    if kind == "synthetic":
        cfg = parse_synthetic(spec)
        info.update(
            params=dataclasses.asdict(cfg),
            infinite=True,
            attributes={k: list(v) for k, v in ATTRIBUTES.items()},
            zeroshot_tasks={t: len(task_classnames(t)) for t in cfg.tasks},
        )
    elif kind == "prepared":
        manifest = read_manifest(spec)
        info.update(
            path=os.path.abspath(spec),
            name=manifest.get("name"),
            splits={
                s: {"shards": len(v.get("shards", [])), "samples": v.get("count")}
                for s, v in manifest.get("splits", {}).items()
            },
        )
        zs = manifest.get("zeroshot") or {}
        if zs.get("file"):
            tasks = read_task_file(os.path.join(spec, zs["file"]))
            info["zeroshot_tasks"] = {str(t["name"]): len(t["classnames"]) for t in tasks}  # type: ignore[arg-type]
    elif kind == "shards":
        paths = _shard_paths(spec)
        shards = [index_shard(p) for p in paths]
        info.update(
            shards=len(paths),
            samples=sum(len(s) for s in shards),
            incomplete=sum(s.incomplete for s in shards),
            first_shard=paths[0],
            last_shard=paths[-1],
        )
        errors = {s.path: s.error for s in shards if s.error}
        if errors:
            info["damaged_shards"] = errors
    elif kind == "table":
        table = read_table(spec)
        info.update(path=os.path.abspath(spec), rows=len(table.images), columns=list(table.columns))
    else:
        folders, files, _ = scan_image_folder(spec)
        info.update(
            path=os.path.abspath(spec), classes=len(folders), images=len(files), classnames=[folder_classname(f) for f in folders]
        )
    return info
