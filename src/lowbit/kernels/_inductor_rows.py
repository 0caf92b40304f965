"""Inductor's row reductions in one pass up to a width (``LOWBIT_PERSISTENT_ROWS``, :func:`set_persistent_rows`).

A row-wise quantizer traced for inductor (``LOWBIT_COMPILED_QUANTIZE=inductor``) is a reduction over each row (its
absmax) followed by a pointwise pass that needs the result; inductor fuses both into the kernel that produces the
row (a LayerNorm, a GELU, a residual gradient). It keeps the whole row in registers — one read, one write — only
for a *persistent* reduction, which its heuristic (``InductorChoices.should_use_persistent_reduction``) allows up to
1024 elements of an inner reduction. Past that it loops over the row twice or three times (a LayerNorm then a
quantize: mean/variance, absmax, codes), reading the row again each time: ViT widths of 1280 to 5120 all fall there.

:func:`set_persistent_rows` raises that bound for inner reductions with an ``InductorChoices`` subclass (inductor's
hook for out-of-tree heuristics): every inner reduction over at most ``limit`` elements (a compile-time constant)
becomes persistent; every other decision stays inductor's. It applies to the graphs compiled after the call, in every
thread: the handler is installed as ``torch._inductor.config.inductor_choices_class`` (which also puts it in the FX
graph cache key) and as the default of inductor's per-thread handler, since inductor's config is per thread in recent
PyTorch and the backward graphs compile in autograd's thread. Compiled graphs go to their own cache directory
(``$TORCHINDUCTOR_CACHE_DIR/lowbit-rows-LIMIT``), so a cache entry never crosses settings. It applies to every model
the process compiles, 16-bit ones included — bench rows that compare with a user's bf16 step say whether it was on.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

_limit = 0
_saved: dict[str, Any] = {}  # what set_persistent_rows replaced: restored by set_persistent_rows(0)


def wants_persistent(features: Any, cooperative_reduction: bool, enabled: bool, inner: Any, limit: int) -> bool:
    """The added rule alone: persistent reductions on, not cooperative, an inner reduction whose element count is a
    compile-time constant of at most ``limit``."""
    if not enabled or cooperative_reduction or features.get_reduction_hint() != inner:
        return False
    import sympy  # here, not at import: lowbit's start-up need not load it (inductor has it loaded by now)

    numel = sympy.sympify(features.reduction_numel)
    return bool(numel.is_number) and int(numel) <= limit


@functools.cache
def _choices_class() -> type:
    """``InductorChoices`` with inner reductions persistent up to ``self.row_limit`` elements (built on first use:
    importing inductor costs a second)."""
    from torch._inductor import config
    from torch._inductor.choices import InductorChoices
    from torch._inductor.runtime.hints import ReductionHint

    class PersistentRows(InductorChoices):
        def __init__(self, limit: int) -> None:
            super().__init__()
            self.row_limit = limit

        def uuid(self) -> str:  # the FX graph cache key's share of this handler
            return f"lowbit-persistent-rows-{self.row_limit}"

        def should_use_persistent_reduction(self, features: Any, cooperative_reduction: bool) -> bool:
            if InductorChoices.should_use_persistent_reduction(features, cooperative_reduction):
                return True
            return wants_persistent(features, cooperative_reduction, config.triton.persistent_reductions,
                                    ReductionHint.INNER, self.row_limit)

    return PersistentRows


def make_choices(limit: int) -> Any:
    """A handler instance (module-level so that ``functools.partial(make_choices, limit)`` pickles)."""
    return _choices_class()(limit)


def persistent_rows() -> int:
    """The width up to which inner reductions are persistent (0: inductor's own rule)."""
    return _limit


def set_persistent_rows(limit: int) -> int:
    """Make inductor's inner reductions over at most ``limit`` elements persistent in graphs compiled from now on (0
    restores inductor's own rule); returns the previous limit. Raises ``RuntimeError`` where another library holds
    inductor's choices hook, or this PyTorch lacks it."""
    global _limit
    if limit < 0:
        raise ValueError(f"set_persistent_rows: the limit must be >= 0, got {limit}")
    from torch._inductor import config
    from torch._inductor import virtualized as v

    if not hasattr(config, "inductor_choices_class") or not hasattr(v._choices, "_default"):
        raise RuntimeError("set_persistent_rows: this PyTorch has no inductor choices hook "
                           "(torch._inductor.config.inductor_choices_class); unset LOWBIT_PERSISTENT_ROWS")
    current = config.inductor_choices_class
    if not _limit and current is not None:
        raise RuntimeError(f"set_persistent_rows: torch._inductor.config.inductor_choices_class is already "
                           f"{current!r} (another library's); lowbit leaves it")
    previous = _limit
    if not _limit:
        _saved.update(default=v._choices._default, cache=os.environ.get("TORCHINDUCTOR_CACHE_DIR"))
    if limit:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        factory: Any = functools.partial(make_choices, limit)
        base = _saved["cache"] or default_cache_dir()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(os.path.abspath(base), f"lowbit-rows-{limit}")
        handler = factory()
    else:
        factory = None
        if _saved.get("cache") is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = _saved["cache"]
        handler = None
    config.inductor_choices_class = factory
    v._choices._default = (lambda: _install_here(v, factory)) if factory else _saved["default"]
    v.V.set_choices_handler(handler if handler is not None else _saved["default"]())
    _limit = limit
    logger.info("lowbit: inductor's inner reductions up to %d elements persistent", limit)
    return previous


def _install_here(v: Any, factory: Any) -> Any:
    """Inductor's lazy per-thread default, with this module's handler."""
    handler = factory()
    setattr(v.threadlocal, v._choices._key, handler)
    return handler


def _from_env() -> None:
    raw = os.environ.get("LOWBIT_PERSISTENT_ROWS", "").strip()
    if not raw:
        return
    try:
        limit = int(raw)
    except ValueError:
        raise ValueError(f"LOWBIT_PERSISTENT_ROWS must be a whole number of elements, got {raw!r}") from None
    if limit:
        set_persistent_rows(limit)
