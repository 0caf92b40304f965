"""Counter-based hashing: reproducible random numbers addressed by (seed, index, field, ...).

Everything random in ``lowbit.data`` (synthetic scenes, epoch shuffles, caption choices) is a pure function
of integer keys, so a sample never depends on which process, worker or chunk produced it, and resuming from
any position needs no replay. SplitMix64 finalisers on ``numpy.uint64`` arrays (wrap-around arithmetic);
independent of the NumPy version, unlike ``numpy.random`` streams.
"""

from __future__ import annotations

import zlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_INIT = np.uint64(0x243F6A8885A308D3)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (bijective on uint64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def key(name: str) -> int:
    """A stable integer for a string key (field or split name)."""
    return zlib.crc32(name.encode("utf-8"))


def _u64(part: int | str | np.ndarray) -> np.ndarray:
    if isinstance(part, str):
        part = key(part)
    arr = np.asarray(part)
    if arr.dtype == np.uint64:
        return arr
    return arr.astype(np.int64).astype(np.uint64)


def hash64(*parts: int | str | np.ndarray) -> np.ndarray:
    """Hash broadcastable integer (or string) keys to uniformly distributed uint64."""
    h = np.asarray(_INIT)
    with np.errstate(over="ignore"):
        for part in parts:
            h = _mix(h ^ _mix(_u64(part) + _GOLDEN))
    return np.asarray(h, dtype=np.uint64)


def uniform(*parts: int | str | np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1) addressed by the keys."""
    return (hash64(*parts) >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def randint(high: int, *parts: int | str | np.ndarray) -> np.ndarray:
    """Integers in [0, high) addressed by the keys."""
    return np.minimum((uniform(*parts) * high).astype(np.int64), high - 1)


def permutation(n: int, *parts: int | str | np.ndarray) -> np.ndarray:
    """A permutation of range(n) addressed by the keys (argsort of hashes; stable across versions)."""
    return np.argsort(hash64(*parts, np.arange(n, dtype=np.int64)), kind="stable")
