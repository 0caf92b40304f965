"""How the known classes of other libraries are named here: matched by name, so that lowbit needs none installed."""

from __future__ import annotations

__all__ = ["class_path"]


def class_path(obj: object) -> str:
    """``module.QualName`` of ``obj``'s class."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
