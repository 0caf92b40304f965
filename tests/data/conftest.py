"""Helpers for the data tests: tiny images, WebDataset tars and tables made on the fly."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from lowbit.data.tars import write_shard


def png_bytes(colour: tuple[int, ...] | int, size: tuple[int, int] = (24, 24), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (24, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def png() -> Callable[..., bytes]:
    """png(colour, size=(24, 24), mode="RGB") → PNG bytes."""
    return png_bytes


@pytest.fixture
def jpeg() -> Callable[..., bytes]:
    """jpeg(colour, size=(24, 24)) → JPEG bytes."""
    return jpeg_bytes


@pytest.fixture
def make_shards(tmp_path: Path) -> Callable[..., list[Path]]:
    """make_shards(n, per_shard) → tar paths; sample i: a PNG of brightness 10*i, caption "sample i"."""

    def make(n: int, per_shard: int, name: str = "shard", folder: Path | None = None) -> list[Path]:
        folder = folder or tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for s, first in enumerate(range(0, n, per_shard)):
            samples = [
                (f"{i:05d}", {"png": png_bytes((10 * i % 256, 0, 0)), "txt": f"sample {i}".encode()})
                for i in range(first, min(n, first + per_shard))
            ]
            path = folder / f"{name}-{s:03d}.tar"
            write_shard(path, samples)
            paths.append(path)
        return paths

    return make


@pytest.fixture
def tiny_train() -> dict:
    """A ``lowbit train`` config (``TrainConfig.from_dict``) small enough for a few CPU steps in seconds, without
    data or output paths: the tests add ``data`` and ``out``."""
    return {
        "preset": "tiny", "recipe": "none", "optimizer": "adamw", "zeroshot": "none", "batch_size": 8, "steps": 3,
        "warmup": 1, "progress": False, "save_every": 0, "device": "cpu", "threads": 1,
        "model": {"vision": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
                  "text": {"width": 32, "layers": 1, "heads": 2, "context_length": 24}, "embed_dim": 32},
    }  # fmt: skip
