"""``FastLaunch``: a Triton kernel launched for the price of its launcher, not of Triton's Python front door.

``kernel[grid](*args, **kwargs)`` runs, on every call, Triton's autotuner dispatch (a dict of every argument, its
key, the config's pre-hook) and the JIT's binder (each argument specialized, a cache key built as a string)
before the compiled kernel's launcher. On an H100 host that front door cost lowbit's GEMM 167 µs per call where
an empty kernel costs 21 µs (``bench/results/h100/host-cost-1.log``): with seven launches per converted linear and
step, a model compiled without CUDA graphs waited on the host (open_clip ViT-H-14 switchback: 64% GPU-busy; Hugging
Face CLIP at ViT-H widths: 55%).

``FastLaunch(kernel)`` takes Triton's path once per *call signature* — every argument's specialization as
Triton sees it and more (tensors: dtype and 16-byte alignment; descriptors: their base, shape and strides; any
other argument: its value, so each int that Triton specializes on divisibility is keyed exactly) plus the
keyword arguments — and keeps the compiled kernel it returned and the autotuner's chosen config. Later calls
with the same signature assemble the arguments as Triton's binder would (call arguments, then the config's
meta-parameters, then defaults), run the config's pre-hook, and call the compiled kernel's launcher with the
same arguments ``JITFunction.run`` passes it (Triton 3.6 and 3.9 alike): same binary, same grid, same stream.
A signature's second launch still goes through Triton's path and must return the kernel kept at the first; if it
does not (a Triton that keys its kernels on more than the signature), that kernel is never replayed again and a
warning says so.
It stays off under ``TRITON_INTERPRET=1`` (the interpreter has no compiled kernel) and with ``LOWBIT_FAST_LAUNCH=0``;
any other attribute is the wrapped kernel's (``.configs``, ``.cache``).
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

_enabled = os.environ.get("LOWBIT_FAST_LAUNCH", "1") != "0"
MAX_SIGNATURES = 4096  # per kernel; past it the cache starts again (shapes that change on every call)


def set_fast_launch(enabled: bool) -> bool:
    """Turn the replay on or off for the launches that follow; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


try:  # host-side TMA descriptors (Triton ≥ 3.4)
    from triton.tools.tensor_descriptor import TensorDescriptor as _Descriptor
except ImportError:  # pragma: no cover - older Triton
    _Descriptor = None


def _signature_of(args: tuple, kwargs: dict, constexpr: frozenset[int]) -> tuple:
    """The call's signature: what decides Triton's compiled kernel, its autotuned config and the launch grid.

    ``constexpr``: the positions of the kernel's ``tl.constexpr`` parameters. A float passed to any other parameter
    is a runtime value (Triton does not specialize on it), so only its type counts; every other value counts in
    full (bools apart from ints: ``True`` and ``1`` hash alike, Triton types them apart).
    """
    parts: list[Any] = []
    for i, a in enumerate(args):
        t = type(a)
        if t is int or a is None:
            parts.append(a)
        elif t is float:
            parts.append((float, a) if i in constexpr else float)
        elif t is bool:
            parts.append((bool, a))
        elif isinstance(a, torch.Tensor):
            parts.append((a.dtype, a.data_ptr() % 16 == 0))
        elif t is _Descriptor:
            b = a.base
            parts.append((b.dtype, b.data_ptr() % 16 == 0, tuple(a.shape), tuple(a.strides)))
        else:
            parts.append((t, a))
    for name, v in kwargs.items():  # keyword arguments are constexprs and launch options here
        parts.append((name, (type(v), v) if type(v) is bool or type(v) is float else v))
    return tuple(parts)


_triton_runtime: Any = None  # (driver, knobs), imported on the first launch


def _runtime() -> Any:
    global _triton_runtime
    if _triton_runtime is None:
        from triton import knobs
        from triton.runtime import driver

        _triton_runtime = (driver, knobs)
    return _triton_runtime


def _current_device() -> int:
    """The device Triton launches on (its own choice: the current CUDA device)."""
    return _runtime()[0].active.get_current_device()


def _current_stream(device: int) -> int:
    return _runtime()[0].active.get_current_stream(device)


def _runtime_knobs() -> Any:
    """Triton's runtime knobs (the launch hooks a profiler such as Proton sets)."""
    return _runtime()[1].runtime


def _triton_version() -> str:
    import triton

    return triton.__version__


def _is_jit(k: Any) -> bool:
    from triton.runtime.jit import JITFunction

    return isinstance(k, JITFunction)


def _is_autotuner(k: Any) -> bool:
    from triton.runtime.autotuner import Autotuner

    return isinstance(k, Autotuner)


def _is_heuristics(k: Any) -> bool:
    from triton.runtime.autotuner import Heuristics

    return isinstance(k, Heuristics)


class _Replay:
    """What a signature's first launch left behind: the compiled kernel and the config it ran with."""

    __slots__ = ("hook_kwargs", "kernel", "meta", "pre_hook", "unchecked")

    def __init__(self, kernel: Any, meta: dict, hook_kwargs: dict, pre_hook: Callable[[dict], Any] | None):
        self.kernel, self.meta, self.hook_kwargs, self.pre_hook = kernel, meta, hook_kwargs, pre_hook
        self.unchecked = True  # the signature's next launch checks it against Triton's own path


class FastLaunch:
    """Wrap a ``triton.jit`` kernel, or a ``triton.autotune`` over one; ``FastLaunch(k)[grid](*args, **kwargs)``
    launches as ``k[grid](...)`` would (see the module docstring)."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        layers = []  # the wrappers around the JIT function, outermost first: an autotuner, heuristics
        inner = kernel
        while not _is_jit(inner) and hasattr(inner, "fn"):
            layers.append(inner)
            inner = inner.fn
        self.autotuner = layers[0] if layers and _is_autotuner(layers[0]) else None
        self.heuristics = [w.values for w in layers if _is_heuristics(w)]
        supported = _is_jit(inner) and all(w is self.autotuner or _is_heuristics(w) for w in layers)
        # The interpreter's kernels are no JITFunction: nothing compiled to replay.
        self.jit = inner if supported else None
        self.names: tuple[str, ...] = tuple(self.jit.arg_names) if self.jit is not None else ()
        params = inspect.signature(self.jit.fn).parameters if self.jit is not None else {}
        self.defaults = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
        # Without Triton's list of constexpr positions every parameter is treated as one (floats keyed by value).
        self.constexpr = frozenset(getattr(self.jit, "constexprs", range(len(self.names))))
        self._replays: dict[tuple, _Replay] = {}
        self.launches = self.replays = 0  # counters: how many launches, how many of them replayed

    def __getattr__(self, name: str) -> Any:  # .configs, .cache, .fn ... of the wrapped kernel
        return getattr(self.__dict__["kernel"], name)

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def launch(self, grid: Any, args: tuple, kwargs: dict) -> Any:
        self.launches += 1
        if not _enabled or self.jit is None or self.jit.pre_run_hooks:
            return self.kernel[grid](*args, **kwargs)
        device = _current_device()
        key = (device, _signature_of(args, kwargs, self.constexpr))
        replay = self._replays.get(key)
        if replay is None:
            return self._first(grid, key, args, kwargs)
        if replay.unchecked:
            return self._check(grid, replay, args, kwargs)
        self.replays += 1
        bound = dict(zip(self.names, args))
        bound.update(kwargs)
        bound.update(replay.hook_kwargs)  # the config's meta-parameters and launch options, as the pre-hook sees them
        bound.update(replay.meta)  # (heuristics' values)
        if replay.pre_hook is not None:
            replay.pre_hook(bound)
        values = [bound[n] if n in bound else self.defaults[n] for n in self.names]
        g = grid(bound) if callable(grid) else grid
        stream = _current_stream(device)
        k = replay.kernel
        rt = _runtime_knobs()
        k.run(g[0], g[1] if len(g) > 1 else 1, g[2] if len(g) > 2 else 1, stream, k.function, k.packed_metadata,
              k.launch_metadata(g, stream, *values), rt.launch_enter_hook, rt.launch_exit_hook, *values)
        return k

    def _check(self, grid: Any, replay: _Replay, args: tuple, kwargs: dict) -> Any:
        """A signature's second launch goes through Triton's path too, and must come back with the kernel kept at
        the first: else this Triton keys its kernels on something the signature misses, and the kernel is never
        replayed again (a warning says so; the launches stay correct, only slower)."""
        k = self.kernel[grid](*args, **kwargs)
        if k is not None and hasattr(k, "result"):
            k = k.result()
        replay.unchecked = False
        if k is not replay.kernel:
            self.jit = None
            warnings.warn(f"lowbit: {getattr(self.kernel, '__name__', self.kernel)!r}: Triton {_triton_version()} "
                          "compiled another kernel for a call signature FastLaunch had seen; its launches go through "
                          "Triton's own path from now on", RuntimeWarning, stacklevel=3)
        return k

    def _first(self, grid: Any, key: tuple, args: tuple, kwargs: dict) -> Any:
        """Triton's own launch (compiling and autotuning as needed); its compiled kernel is kept for the key."""
        k = self.kernel[grid](*args, **kwargs)
        if k is not None and hasattr(k, "result"):  # an asynchronously compiled kernel
            k = k.result()
        if k is None or not hasattr(k, "packed_metadata") or not hasattr(k, "function"):
            return k
        meta: dict = {}
        hook_kwargs: dict = {}
        pre_hook = None
        if self.autotuner is not None:
            config = self.autotuner.best_config
            meta = dict(config.kwargs)
            hook_kwargs = config.all_kwargs()
            pre_hook = config.pre_hook
        # Heuristics (``triton.heuristics``) computed as Heuristics.run computes them: from the call's arguments and
        # everything set so far; the signature keys every argument they can read, so the values hold for the key.
        nargs = {**dict(zip(self.names, args)), **kwargs, **hook_kwargs}
        for values in self.heuristics:
            for name, heuristic in values.items():
                nargs[name] = meta[name] = heuristic(nargs)
        meta = {n: v for n, v in meta.items() if n in self.names}
        if len(self._replays) >= MAX_SIGNATURES:
            self._replays.clear()
        self._replays[key] = _Replay(k, meta, hook_kwargs, pre_hook)
        return k
