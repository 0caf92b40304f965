"""Measured layer choice: convert a linear only where its recipe was measured faster than bf16 at its shape.

``layers="auto"`` (``lowbit train``, ``lowbit bench step``) and :func:`measured_filter` (any model, through
``lowbit.convert(..., module_filter=measured_filter(recipe, tokens))``) decide per layer shape, on the user's
GPU at conversion time, instead of from one width threshold:

* :func:`measure_linear` times one linear's forward + backward (input, weight and bias gradients; fp32 master
  weights under bf16 autocast, as the trainer runs them) as a plain ``nn.Linear`` and converted to the recipe
  (``lowbit.convert``), at ``tokens × in_features → out_features``. It warms up eagerly first (Triton autotunes
  on first calls, which must not happen inside a capture), then captures a few iterations in a CUDA graph and
  takes the median of several replays (CUDA events), so that eager launch costs, which a compiled and graphed
  trainer does not pay, do not decide. Where capture fails it times eager iterations and says so.
* :class:`ShapeTimer` measures each distinct shape once per object and keeps the result in a JSON cache
  (``$LOWBIT_CACHE_DIR`` or ``~/.cache/lowbit/``, ``autolayers.json``, keyed by device name, torch, Triton and
  lowbit versions, recipe and shape), so later runs read instead of measuring. A corrupt cache gets one warning
  and is measured again.
* A layer stays 8-bit where gain = t_bf16 / t_recipe ≥ 1 + :data:`GAIN_MARGIN`, else 16-bit with the measured
  cause in ``convert_report(model)``. Without a CUDA device (or a token count) nothing is measured: the width
  threshold of ``lowbit.nn.convert`` decides, and the report says "not measured".

The measurement sees one layer alone (its input in bf16, quantized by the layer itself): a compiled model that
fuses quantization into the producing op may gain more than measured, so the choice errs towards 16-bit.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.functional.recipe import Recipe, get_recipe

__all__ = [
    "GAIN_MARGIN",
    "MeasuredFilter",
    "Measurement",
    "ShapeTimer",
    "default_cache_dir",
    "linear_tokens",
    "measure_linear",
    "measured_filter",
]

logger = logging.getLogger(__name__)

GAIN_MARGIN = 0.02
"""A layer converts only where it measured at least this much faster than bf16 (gain ≥ 1.02): a layer within
timing noise of bf16 gains nothing from 8-bit and still pays its quantization error, so it stays 16-bit."""

CACHE_FILE = "autolayers.json"
_CACHE_VERSION = 1
ITERS_PER_GRAPH = 3  # fwd+bwd iterations captured in one graph
REPLAYS = 7  # graph replays timed (median)
WARMUP = 3  # eager iterations before capture (autotuning happens here)

# (tokens, in_features, out_features, bias) -> (t_bf16 ms, t_recipe ms, method)
Measure = Callable[[int, int, int, bool], tuple[float, float, str]]


@dataclass(frozen=True)
class Measurement:
    """One shape's timing: milliseconds per fwd+bwd in bf16 and in the recipe, how it was timed, on what."""

    t_bf16_ms: float
    t_recipe_ms: float
    method: str  # "CUDA graphs", or "eager (CUDA graph capture failed: ...)"
    device: str

    @property
    def gain(self) -> float:
        """t_bf16 / t_recipe: above 1 the recipe is faster."""
        return self.t_bf16_ms / self.t_recipe_ms if self.t_recipe_ms > 0 else float("nan")


def default_cache_dir() -> Path:
    """The folder of the measurement cache (``autolayers.json``): ``$LOWBIT_CACHE_DIR``, else ``~/.cache/lowbit``."""
    root = os.environ.get("LOWBIT_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "lowbit"


def _versions() -> str:
    from lowbit._version import __version__

    try:
        import triton

        tv = triton.__version__
    except Exception:  # pragma: no cover - triton ships with CUDA torch
        tv = "none"
    autotune = "" if os.environ.get("LOWBIT_AUTOTUNE", "1") != "0" else "|LOWBIT_AUTOTUNE=0"  # other kernels
    return f"torch {torch.__version__}|triton {tv}|lowbit {__version__}{autotune}"


# ------------------------------------------------------------------------------------------------ measuring

def _first_line(e: BaseException, limit: int) -> str:
    """The first line of ``e``'s message (its class name where it has none), at most ``limit`` characters."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


def measure_linear(recipe: str | Recipe, device: torch.device | str, tokens: int, d_in: int, d_out: int,
                   bias: bool = True) -> tuple[float, float, str]:
    """(t_bf16 ms, t_recipe ms, method) of one linear's fwd+bwd at ``tokens × d_in → d_out`` on a CUDA device."""
    from lowbit.nn.convert import convert

    device = torch.device(device)
    with torch.random.fork_rng(devices=[device]):  # the caller's random state stays as it was, measured or cached
        torch.manual_seed(0)
        plain = nn.Linear(d_in, d_out, bias=bias, device=device)
        low = convert(copy.deepcopy(plain), get_recipe(recipe), module_filter=lambda fqn, m: True)
        x = torch.randn(tokens, d_in, device=device, dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn(tokens, d_out, device=device, dtype=torch.bfloat16)
        times, methods = [], []
        for m in (plain, low):
            ms, method = _time_module(m, x, dy, device)
            times.append(ms)
            methods.append(method)
    method = methods[0] if methods[0] == methods[1] else f"bf16: {methods[0]}; recipe: {methods[1]}"
    del plain, low, x, dy
    torch.cuda.empty_cache()
    return times[0], times[1], method


def _time_module(m: nn.Module, x: torch.Tensor, dy: torch.Tensor, device: torch.device) -> tuple[float, str]:
    inputs = [x, *m.parameters()]

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            y = m(x)
        torch.autograd.grad(y, inputs, dy)

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP):  # Triton compiles and autotunes here, outside any capture
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(ITERS_PER_GRAPH):
                step()
        graph.replay()
        run, method = graph.replay, "CUDA graphs"
    except Exception as e:  # a host sync or an uncapturable op: time eager iterations instead
        torch.cuda.synchronize(device)
        first = _first_line(e, 120)
        graph = None

        def run() -> None:
            for _ in range(ITERS_PER_GRAPH):
                step()

        method = f"eager (CUDA graph capture failed: {first})"
        run()
    samples = []
    for _ in range(REPLAYS):
        start.record()
        run()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / ITERS_PER_GRAPH)
    del graph
    return statistics.median(samples), method


# ------------------------------------------------------------------------------------------------ the cache

class ShapeTimer:
    """Gain ratios of ``recipe`` over bf16 per shape on ``device``: measured once per shape, cached on disk.

    ``measure(tokens, d_in, d_out, bias) -> (t_bf16_ms, t_recipe_ms, method)`` replaces the CUDA timing (tests
    pass fakes; ``device_name`` then names the cache entries). ``cache_dir`` overrides :func:`default_cache_dir`
    (``None``: that default; a failed write warns once and keeps the results in memory). ``ranks_agree``: under
    ``torch.distributed``, every rank takes rank 0's measurement (every rank must then look up the same shapes in
    the same order, as identical models do), so all ranks convert the same layers.
    """

    def __init__(self, recipe: str | Recipe, device: torch.device | str, *, measure: Measure | None = None,
                 device_name: str | None = None, cache_dir: str | Path | None = None,
                 ranks_agree: bool = False) -> None:
        self.recipe = get_recipe(recipe)
        self.device = torch.device(device)
        self._measure = measure
        if device_name is None:
            cuda = self.device.type == "cuda" and measure is None and torch.cuda.is_available()
            device_name = torch.cuda.get_device_name(self.device) if cuda else self.device.type
        self.device_name = device_name
        self.cache_file = Path(cache_dir if cache_dir is not None else default_cache_dir()) / CACHE_FILE
        self.ranks_agree = ranks_agree
        self._memo: dict[str, Measurement] = {}
        self._write_failed = False
        self._warned = False
        self.measured = 0  # shapes measured (not read from the cache) by this object

    @property
    def can_measure(self) -> str | None:
        """``None`` if shapes can be measured here, else why not (a short phrase for the report)."""
        if self._measure is not None:
            return None
        if self.device.type != "cuda":
            return self.device.type
        if not torch.cuda.is_available():
            return "no CUDA"
        return None

    def key(self, tokens: int, d_in: int, d_out: int, bias: bool) -> str:
        return (f"{self.device_name}|{_versions()}|{self.recipe.name}|{tokens}x{d_in}->{d_out}"
                f"|{'bias' if bias else 'no bias'}")

    def get(self, tokens: int, d_in: int, d_out: int, bias: bool = True) -> Measurement:
        """The shape's measurement: from this object, else the cache file, else measured now (and cached)."""
        key = self.key(tokens, d_in, d_out, bias)
        if key in self._memo:
            return self._memo[key]
        found = self._read().get(key)
        m = _entry(found) if found is not None else None
        if m is None:
            if self._measure is not None:
                t16, t8, method = self._measure(tokens, d_in, d_out, bias)
            else:
                t16, t8, method = measure_linear(self.recipe, self.device, tokens, d_in, d_out, bias)
            m = Measurement(float(t16), float(t8), method, self.device_name)
            self.measured += 1
            logger.info("lowbit.autolayers: %s at %d×%d→%d: %.3f ms bf16, %.3f ms (%.2f×, %s)", self.recipe.name,
                        tokens, d_in, d_out, m.t_bf16_ms, m.t_recipe_ms, m.gain, method)
            self._write(key, m)
        if self.ranks_agree:
            m = _rank0(m, self.device)
        self._memo[key] = m
        return m

    def _read(self) -> dict[str, Any]:
        """The cache's entries (``{}`` when absent or unreadable; a corrupt file warns once per object)."""
        try:
            text = self.cache_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as e:
            self._warn(f"cannot read the measurement cache {str(self.cache_file)!r} ({e}); measuring again")
            return {}
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
                raise ValueError("no 'entries' object")
            if data.get("version") != _CACHE_VERSION:
                return {}
            return data["entries"]
        except ValueError as e:
            self._warn(f"the measurement cache {str(self.cache_file)!r} is corrupt ({e}); measuring again and "
                       "rewriting it")
            return {}

    def _warn(self, text: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(f"lowbit.autolayers: {text}")

    def _write(self, key: str, m: Measurement) -> None:
        from lowbit.atomic_io import atomic_write_text

        if self._write_failed:
            return
        entries = self._read()  # another process may have added shapes since
        entries[key] = {**asdict(m), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.cache_file, json.dumps({"version": _CACHE_VERSION, "entries": entries},
                                                          indent=1, sort_keys=True) + "\n")
        except OSError as e:
            self._write_failed = True
            logger.warning(f"lowbit.autolayers: cannot write the measurement cache {str(self.cache_file)!r} ({e}); "
                           "this run's measurements are kept in memory only")


def _entry(found: Any) -> Measurement | None:
    """A cache entry as a Measurement, or None if it is malformed (then it is measured again)."""
    try:
        m = Measurement(float(found["t_bf16_ms"]), float(found["t_recipe_ms"]), str(found["method"]),
                        str(found["device"]))
    except (TypeError, KeyError, ValueError):
        logger.warning("lowbit.autolayers: a malformed entry in the measurement cache; measuring it again")
        return None
    return m if m.t_bf16_ms > 0 and m.t_recipe_ms > 0 else None


def _rank0(m: Measurement, device: torch.device) -> Measurement:
    """Rank 0's timings on every rank (a no-op outside an initialised process group of several ranks).

    Every rank must reach this broadcast for every shape: a measurement that raises on some ranks only (one GPU out
    of memory, say) leaves the others waiting here until the process group's timeout ends the run."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return m
    on = device if device.type == "cuda" and "nccl" in str(dist.get_backend()) else torch.device("cpu")
    t = torch.tensor([m.t_bf16_ms, m.t_recipe_ms], dtype=torch.float64, device=on)
    dist.broadcast(t, src=0)
    t16, t8 = (float(v) for v in t.tolist())
    return m if (t16, t8) == (m.t_bf16_ms, m.t_recipe_ms) else Measurement(t16, t8, f"{m.method}, rank 0's", m.device)


# ------------------------------------------------------------------------------------------------ the decision

class MeasuredFilter:
    """A ``module_filter`` that converts a linear where ``timer`` measured its recipe ≥ 1 + ``margin`` times as
    fast as bf16 at its shape. ``tokens``: rows per call, one number or ``fqn -> number`` (``None``: not
    measured, the width threshold decides). Layers that cannot convert at all (misaligned widths, the internal
    projections of ``nn.MultiheadAttention``) are rejected as by the default filter, without measuring.

    ``reason(fqn, module)`` says why a layer stays 16-bit and ``note(fqn, module)`` what was measured for a
    converted one: ``lowbit.convert`` puts both in its ``ConvertReport``.
    """

    def __init__(self, timer: ShapeTimer, tokens: int | Callable[[str], int | None] | None,
                 margin: float = GAIN_MARGIN) -> None:
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if isinstance(tokens, int) and tokens <= 0:
            raise ValueError(f"tokens must be > 0, got {tokens}")
        self.timer = timer
        self.tokens = tokens
        self.margin = margin
        self._failed: dict[tuple[int, int, int, bool], str] = {}  # shapes whose measurement raised: not retried

    def _tokens(self, fqn: str) -> int | None:
        return self.tokens(fqn) if callable(self.tokens) else self.tokens

    def _not_measured(self, fqn: str) -> str | None:
        if (why := self.timer.can_measure) is not None:
            return why
        if not self.timer.recipe.quantized:
            return f"recipe {self.timer.recipe.name} does not quantize"
        if self._tokens(fqn) is None:
            return "no token count"
        return None

    def _decide(self, fqn: str, module: nn.Linear) -> tuple[bool, str, tuple[float, str] | None]:
        """(convert?, why, (measured gain, measured shape ``tokens×in→out``) or None)."""
        from lowbit.nn.convert import MIN_FEATURES, skip_reason

        if r := skip_reason(fqn, module, min_features=0):
            return False, r, None
        d_in, d_out = module.in_features, module.out_features
        if (why := self._not_measured(fqn)) is not None:
            r = skip_reason(fqn, module)
            rule = f"both widths ≥ {MIN_FEATURES}"
            return (r is None, f"not measured ({why}): width threshold, {rule}" if r is None
                    else f"not measured ({why}): width threshold: {r}", None)
        tokens = self._tokens(fqn)
        assert tokens is not None
        shape = (tokens, d_in, d_out, module.bias is not None)
        if shape in self._failed:
            return False, self._failed[shape], None
        try:
            m = self.timer.get(*shape)
        except Exception as e:  # out of memory, a recipe this device cannot run: 16-bit, said in the report
            first = _first_line(e, 160)
            logger.warning(f"lowbit.autolayers: measuring {self.timer.recipe.name} at {tokens}×{d_in}→{d_out} failed "
                           f"({type(e).__name__}: {first}); layers of this shape stay 16-bit")
            self._failed[shape] = (f"measurement failed ({type(e).__name__}: {first}) at {tokens}×{d_in}→{d_out}: "
                                   "kept 16-bit")
            return False, self._failed[shape], None
        at = f"{tokens}×{d_in}→{d_out}"
        where = f"{m.gain:.2f}× bf16 at {at} ({m.method}, {m.device})"
        if m.gain >= 1 + self.margin:
            return True, f"measured faster: {where}", (m.gain, at)
        return False, f"measured slower: {where}; needs ≥ {1 + self.margin:.2f}×", (m.gain, at)

    def __call__(self, fqn: str, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear) and self._decide(fqn, module)[0]

    def reason(self, fqn: str, module: nn.Module) -> str | None:
        """Why ``module`` stays 16-bit, or ``None`` if it converts."""
        if not isinstance(module, nn.Linear):
            return None
        ok, why, _ = self._decide(fqn, module)
        return None if ok else why

    def note(self, fqn: str, module: nn.Module) -> str:
        """What decided a converted layer (the measured gain, or the threshold); ``""`` if it does not convert."""
        if not isinstance(module, nn.Linear):
            return ""
        ok, why, _ = self._decide(fqn, module)
        return why if ok else ""

    def measurement(self, fqn: str, module: nn.Module) -> tuple[float, str] | None:
        """The measured gain over bf16 and the shape it was measured at (``tokens×in→out``), or ``None`` where
        nothing was measured: ``lowbit.convert`` puts it in the report row (``LayerRow.gain``, ``measured_at``)."""
        return self._decide(fqn, module)[2] if isinstance(module, nn.Linear) else None


def measured_filter(recipe: str | Recipe, tokens: int | Callable[[str], int | None] | None,
                    device: torch.device | str = "cuda", *, margin: float = GAIN_MARGIN,
                    measure: Measure | None = None, cache_dir: str | Path | None = None,
                    ranks_agree: bool = False) -> MeasuredFilter:
    """A ``module_filter`` for ``lowbit.convert`` that keeps 8-bit only the linears measured faster than bf16.

    ``tokens``: the rows each linear sees per call (batch × sequence length), or ``fqn -> rows`` where they
    differ. The measurement runs on ``device`` (the user's GPU) when the filter is first asked about a shape,
    once per shape, cached across runs (see :class:`ShapeTimer`); without CUDA the width threshold decides::

        model = lowbit.convert(model, "fp8-switchback",
                               module_filter=measured_filter("fp8-switchback", tokens=batch * seq_len))
        print(lowbit.nn.convert_report(model).table())  # the measured gain of every layer

    Where layers see different row counts (two towers, a pooled head), count them with :func:`linear_tokens`
    (``tokens=linear_tokens(model, lambda: model(x)).get``).
    """
    return MeasuredFilter(ShapeTimer(recipe, device, measure=measure, cache_dir=cache_dir, ranks_agree=ranks_agree),
                          tokens, margin)


def linear_tokens(model: nn.Module, run: Callable[[], Any]) -> dict[str, int]:
    """The rows per call of every linear :func:`lowbit.convert` may convert, seen in one ``run()`` (a forward of
    ``model`` on a real batch, without gradients): ``{fqn: rows}`` for each ``nn.Linear`` called (its input's
    elements over ``in_features``; the largest call where one is called several times) and ``<fqn>.in_proj`` /
    ``<fqn>.out_proj`` for each ``nn.MultiheadAttention`` (the query's rows; its projections are not module calls).
    Pass ``.get`` as :func:`measured_filter`'s ``tokens``; a linear the run did not call gets no count (the width
    threshold decides it)."""
    rows: dict[str, int] = {}

    def seen(fqn: str, n: int) -> None:
        rows[fqn] = max(rows.get(fqn, 0), n)

    def hook(fqn: str, module: nn.Module):
        def pre(_: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs.get("query", kwargs.get("input"))
            if not isinstance(x, torch.Tensor) or x.ndim == 0:
                return
            if isinstance(module, nn.MultiheadAttention):
                n = x.numel() // module.embed_dim
                seen(f"{fqn}.in_proj" if fqn else "in_proj", n)
                seen(f"{fqn}.out_proj" if fqn else "out_proj", n)
            else:
                seen(fqn, x.numel() // x.shape[-1])
        return pre

    handles = [m.register_forward_pre_hook(hook(fqn, m), with_kwargs=True) for fqn, m in model.named_modules()
               if isinstance(m, (nn.Linear, nn.MultiheadAttention))]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return rows
