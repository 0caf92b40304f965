"""lowbit: fast, stable, low-precision training of transformers, starting with CLIP."""

from lowbit._version import __version__

__all__ = ["__version__"]
