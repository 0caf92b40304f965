"""Zero-shot classification tasks: a task (class names + prompt templates) and a labelled image dataset.

Sources: the synthetic attribute tasks (``synthetic``), the task file + test shards of a prepared directory
(labels in a ``.cls`` member, or ``.<name>.cls`` for further tasks), and image folders ``root/<class>/*.jpg``.
A corrupt image in a labelled dataset is counted in ``dataset.stats`` and replaced by the next decodable one
(so evaluation never crashes; the replacement's own label is returned).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from lowbit.data import _rng
from lowbit.data.image import IMAGE_EXTENSIONS
from lowbit.data.sources import MAX_CONSECUTIVE_BAD, ShardReader, SkipSample, load_image
from lowbit.data.tars import ShardIndex

DEFAULT_TEMPLATES: list[str] = [
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a low resolution photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
]


@dataclass(frozen=True)
class ZeroShotTask:
    """A zero-shot classification task: class names and prompt templates containing ``{}``."""

    name: str
    classnames: list[str] = field(hash=False)
    templates: list[str] = field(hash=False)

    def __post_init__(self) -> None:
        if not self.classnames:
            raise ValueError(f"zero-shot task {self.name!r} has no class names")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError(f"zero-shot task {self.name!r}: every template needs a '{{}}' placeholder")

    def prompts(self, classname: str) -> list[str]:
        """The templates filled with one class name."""
        return [t.format(classname) for t in self.templates]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "classnames": list(self.classnames), "templates": list(self.templates)}


def subset(n: int, limit: int | None, seed: int, name: str) -> np.ndarray:
    """Indices of an evaluation subset: all, or ``limit`` drawn at random (by seed), kept in file order."""
    if limit is None or limit >= n:
        return np.arange(n, dtype=np.int64)
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return np.sort(_rng.permutation(n, seed, "subset", name)[:limit])


class _Labelled(Dataset):
    """Base: images addressed by an id list, labels array; corrupt images replaced by the next id."""

    def __init__(self, ids: np.ndarray, labels: np.ndarray, image_size: int) -> None:
        self.ids, self._labels, self.image_size = ids, labels, image_size
        self.stats: dict[str, int] = {"skipped_images": 0, "skipped_captions": 0}

    def __len__(self) -> int:
        return len(self.ids)

    def labels(self) -> np.ndarray:
        """All labels, in order (before any corrupt-image replacement)."""
        return self._labels.copy()

    def _image(self, i: int) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.ids)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        i %= n
        for attempt in range(min(n, MAX_CONSECUTIVE_BAD)):
            j = (i + attempt) % n
            try:
                return self._image(j), int(self._labels[j])
            except SkipSample as skip:
                self.stats[skip.kind] += 1
        raise ValueError(f"{type(self).__name__}: no decodable image among consecutive samples near {i}")


class ShardTaskDataset(_Labelled):
    """Labelled images from test shards: label member ``label_ext`` (text integer)."""

    def __init__(
        self, shards: list[ShardIndex], label_ext: str, n_classes: int, *, image_size: int, ids: np.ndarray | None = None
    ) -> None:
        self.reader = ShardReader(shards)
        total = sum(self.reader.counts)
        all_ids = np.arange(total, dtype=np.int64) if ids is None else ids
        labels, keep = [], []
        for sid in all_ids.tolist():
            raw = self.reader.member(sid, label_ext)
            try:
                label = int(raw.decode("ascii").strip()) if raw is not None else -1
            except (UnicodeDecodeError, ValueError):
                label = -1
            if 0 <= label < n_classes:
                labels.append(label)
                keep.append(sid)
        super().__init__(np.asarray(keep, dtype=np.int64), np.asarray(labels, dtype=np.int64), image_size)
        self.dropped = len(all_ids) - len(keep)  # samples without a valid label

    def _image(self, i: int) -> torch.Tensor:
        return load_image(self.reader.image_bytes(int(self.ids[i])), self.image_size)


class ImageFolderDataset(_Labelled):
    """``root/<class>/<image>`` folders; class ``i`` is the i-th folder name in sorted order."""

    def __init__(self, files: list[str], labels: list[int], *, image_size: int) -> None:
        self.files = files
        super().__init__(np.arange(len(files), dtype=np.int64), np.asarray(labels, dtype=np.int64), image_size)

    def _image(self, i: int) -> torch.Tensor:
        return load_image(self.files[i], self.image_size)


def scan_image_folder(root: str) -> tuple[list[str], list[str], list[int]]:
    """(class folder names, image files, labels) of an image folder, sorted; empty lists if none."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    files: list[str] = []
    labels: list[int] = []
    kept: list[str] = []
    for d in classes:
        folder = os.path.join(root, d)
        images = sorted(
            f for f in os.listdir(folder) if f.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS and not f.startswith(".")
        )
        if not images:
            continue
        files.extend(os.path.join(folder, f) for f in images)
        labels.extend([len(kept)] * len(images))
        kept.append(d)
    return kept, files, labels


def folder_classname(folder: str) -> str:
    """Folder name → class name: underscores become spaces."""
    return folder.replace("_", " ").strip()


def read_task_file(path: str) -> list[dict[str, object]]:
    """Task entries of a prepared directory's task file (JSON ``{"tasks": [...]}``), validated."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    tasks = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(tasks, list) or not tasks:
        raise ValueError(f"zero-shot task file {path!r} has no 'tasks' list")
    for t in tasks:
        if not isinstance(t, dict) or not {"name", "classnames", "templates"} <= set(t):
            raise ValueError(f"zero-shot task file {path!r}: each task needs name, classnames, templates")
    return tasks
