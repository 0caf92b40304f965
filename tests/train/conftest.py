"""Fixtures of the trainer tests; the stand-ins they use live in ``train_fakes.py``."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
from train_fakes import make_fake_data


@pytest.fixture
def float64() -> Iterator[None]:
    """Build the model (and the fake data) in float64 for tests whose point is the plumbing, not the rounding."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@pytest.fixture
def fake_data(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Route the trainer's ``lowbit.data`` to the fake."""
    fake = make_fake_data()
    monkeypatch.setattr("lowbit.train.batches.data_module", lambda: fake)
    return fake
