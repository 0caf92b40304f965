"""The trainer tests' stand-ins (imported by name, never as ``conftest``, whose module name pytest shares between
folders): a tiny, fast, learnable stand-in for ``lowbit.data`` honouring its contract (deterministic, ``start`` = samples
already consumed, rank sharding), so trainer tests need neither the real datasets nor much CPU."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace

import torch

CLASSES = ["red", "green", "blue", "white"]


def _sample(seed: int, index: int, image_size: int) -> tuple[torch.Tensor, int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    label = int(torch.randint(len(CLASSES), (1,), generator=g))
    image = 0.3 * torch.randn(3, image_size, image_size, generator=g)
    image[label % 3] += 1.0 if label < 3 else 0.0
    if label == 3:
        image += 1.0
    return image, label


class FakeTrain(torch.utils.data.IterableDataset):
    def __init__(self, image_size: int, seed: int, start: int, rank: int, world_size: int, nan_at: int | None) -> None:
        self.image_size, self.seed, self.start, self.rank, self.world_size, self.nan_at = image_size, seed, start, rank, world_size, nan_at

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        k = self.start
        while True:
            index = k * self.world_size + self.rank
            image, label = _sample(self.seed, index, self.image_size)
            if self.nan_at is not None and k >= self.nan_at:
                image = torch.full_like(image, float("nan"))
            yield image, f"a photo of {CLASSES[label]}"
            k += 1


@dataclass
class ZeroShotTask:
    name: str
    classnames: list[str]
    templates: list[str]


class FakeEval(torch.utils.data.Dataset):
    def __init__(self, image_size: int, n: int) -> None:
        self.items = [_sample(12345, i, image_size) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.items[i]


def make_fake_data(nan_at: int | None = None) -> SimpleNamespace:
    def build_train_data(spec: str, *, image_size: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1,
                         uint8: bool = False, max_image_pixels: int | None = None) -> FakeTrain:  # uint8: rendered float pixels stay float (as synthetic)
        assert spec == "fake", spec
        return FakeTrain(image_size, seed, start, rank, world_size, nan_at)

    def build_zeroshot(spec: str, *, image_size: int, seed: int = 0, limit: int | None = None) -> list:
        assert spec == "fake", spec
        task = ZeroShotTask("fake-colors", CLASSES, ["a photo of {}", "{}"])
        return [(task, FakeEval(image_size, limit or 32))]

    return SimpleNamespace(build_train_data=build_train_data, build_zeroshot=build_zeroshot, describe=lambda spec: {"name": spec})


# A small, fast configuration: 2-layer towers of width 32 on 16-px images, plain nn.Linear, AdamW.
SMALL = {
    "preset": "tiny",
    "model": {"vision": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
              "text": {"width": 32, "layers": 1, "heads": 2, "context_length": 24}, "embed_dim": 32},
    "recipe": "none",
    "optimizer": "adamw",
    "data": "fake",
    "zeroshot": "fake",
    "batch_size": 16,
    "steps": 6,
    "warmup": 2,
    "lr": 3e-3,
    "progress": False,
    # Fixed, not auto: auto follows the load average (loop.cpu_threads), and parallel reductions round
    # differently with another thread count, so a resumed run could differ in the last bit from an uninterrupted
    # one on a busy many-core host.
    "threads": 1,
}


# ``lowbit train`` on the CPU as a subprocess: a 1-block tiny model on synthetic data, a schedule long enough that
# the tests stop it (a signal, --stop-at, a kill) rather than it ending by itself; the tests add --out and the rest.
TRAIN_CLI = [sys.executable, "-m", "lowbit", "train", "--device", "cpu", "--steps", "5000", "--warmup", "1",
             "--zeroshot", "none", "--no-progress", "--threads", "1", "--recipe", "none", "--optimizer", "adamw",
             "--batch-size", "8", "--save-every", "0", "--set", "model.vision.layers=1", "--set",
             "model.text.layers=1"]


def cli_env() -> dict[str, str]:
    """The environment for :data:`TRAIN_CLI`: this checkout's ``src`` first on ``PYTHONPATH``."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


@functools.cache
def _faults_script() -> ModuleType:
    """``experiments/faults.py`` as a module (it injects the same signals into real runs)."""
    path = Path(__file__).resolve().parents[2] / "experiments" / "faults.py"
    spec = importlib.util.spec_from_file_location("lowbit_faults_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torchrun_ranks(launcher: int) -> dict[int, int]:
    """rank -> pid of the workers of the ``torchrun`` process ``launcher`` (from /proc; ``experiments/faults.py``'s
    helper)."""
    return _faults_script()._ranks(launcher)
