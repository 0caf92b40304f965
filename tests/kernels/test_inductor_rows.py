"""``LOWBIT_PERSISTENT_ROWS`` / ``set_persistent_rows``: inductor's inner reductions up to a width in one pass."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import sympy
import torch
from torch._inductor import config
from torch._inductor.runtime.hints import ReductionHint

from lowbit.kernels import _inductor_rows as rows
from lowbit.kernels import ops

needs_hook = pytest.mark.skipif(not hasattr(config, "inductor_choices_class"),
                                reason="this torch has no inductor_choices_class")


def _features(numel, hint=ReductionHint.INNER):
    return SimpleNamespace(reduction_numel=numel, get_reduction_hint=lambda: hint)


@pytest.mark.parametrize(("numel", "hint", "coop", "enabled", "want"), [
    (sympy.Integer(5120), ReductionHint.INNER, False, True, True),
    (sympy.Integer(8192), ReductionHint.INNER, False, True, True),
    (sympy.Integer(8193), ReductionHint.INNER, False, True, False),  # past the limit
    (1280, ReductionHint.INNER, False, True, True),  # a plain int
    (sympy.Integer(5120), ReductionHint.OUTER, False, True, False),  # column reductions keep inductor's rule
    (sympy.Integer(5120), ReductionHint.INNER, True, True, False),  # cooperative: inductor's rule
    (sympy.Integer(5120), ReductionHint.INNER, False, False, False),  # persistent reductions switched off
    (sympy.Symbol("s0", positive=True, integer=True), ReductionHint.INNER, False, True, False),  # not a constant
])
def test_the_added_rule(numel, hint, coop, enabled, want) -> None:
    assert rows.wants_persistent(_features(numel, hint), coop, enabled, ReductionHint.INNER, 8192) is want


@needs_hook
def test_installs_for_every_thread_and_restores() -> None:
    """The handler reaches threads started later (CUDA compiles a lazily compiled backward graph in autograd's device
    thread, where inductor's per-thread config is not the caller's) and 0 gives inductor's rule back."""
    from torch._inductor.virtualized import V

    assert rows.persistent_rows() == 0
    prior = config.inductor_choices_class
    try:
        assert rows.set_persistent_rows(8192) == 0
        assert rows.persistent_rows() == 8192
        assert V.choices.row_limit == 8192
        seen = []
        t = threading.Thread(target=lambda: seen.append(getattr(V.choices, "row_limit", None)))
        t.start()
        t.join()
        assert seen == [8192]
        assert rows.set_persistent_rows(2048) == 8192  # a second call replaces ours
        assert V.choices.row_limit == 2048
    finally:
        rows.set_persistent_rows(0)
    assert rows.persistent_rows() == 0
    assert config.inductor_choices_class is prior
    assert getattr(V.choices, "row_limit", None) is None


def test_cache_directory_is_per_setting(monkeypatch, tmp_path) -> None:
    if not hasattr(config, "inductor_choices_class"):
        pytest.skip("this torch has no inductor_choices_class")
    import os

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    try:
        rows.set_persistent_rows(2048)
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == os.path.join(str(tmp_path), "lowbit-rows-2048")
        assert rows.make_choices(2048).uuid() != rows.make_choices(4096).uuid()
    finally:
        rows.set_persistent_rows(0)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path)


@needs_hook
def test_leaves_another_librarys_hook() -> None:
    from torch._inductor.choices import InductorChoices

    class Theirs(InductorChoices):
        pass

    with config.patch(inductor_choices_class=Theirs), pytest.raises(RuntimeError, match="another library"):
        rows.set_persistent_rows(4096)
    assert rows.persistent_rows() == 0


def test_env_value_must_be_a_number(monkeypatch) -> None:
    monkeypatch.setenv("LOWBIT_PERSISTENT_ROWS", "wide")
    with pytest.raises(ValueError, match="LOWBIT_PERSISTENT_ROWS must be a whole number"):
        rows._from_env()
    with pytest.raises(ValueError, match=">= 0"):
        rows.set_persistent_rows(-1)


@needs_hook
def test_compiled_quantize_still_exact_with_rows_on() -> None:
    """Installed, a compiled LayerNorm + traced row quantizer writes the codes and scales the eager quantizer gives
    for the LayerNorm output it computed (CPU: inductor's C++; CUDA: one persistent Triton pass). The LayerNorm
    itself sums in another order than eager's: equal to float32 rounding (|h| < 8, 1280 terms)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    x = torch.randn(64, 1280, device=device, dtype=torch.bfloat16) * 3
    w = torch.randn(1280, device=device)

    def ln_quantize(t):
        h = torch.nn.functional.layer_norm(t.float(), (1280,), w)
        return (h, *ops.quantize(h, "e4m3", "row"))

    torch._dynamo.reset()
    try:
        rows.set_persistent_rows(2048)
        with ops.compiled_quantize_mode("inductor"):
            fn = torch.compile(ln_quantize, fullgraph=True)
            if device == "cuda":
                from torch._inductor.utils import run_and_get_code

                (h, q, s), code = run_and_get_code(fn, x)
                src = "\n".join(code)
                assert "persistent_reduction" in src and "reduction(" not in src.replace("persistent_reduction(", "")
            else:
                h, q, s = fn(x)
    finally:
        rows.set_persistent_rows(0)
        torch._dynamo.reset()
    ref_q, ref_s = ops.quantize(h, "e4m3", "row")
    assert torch.equal(q.view(torch.int8), ref_q.view(torch.int8))
    assert torch.equal(s, ref_s)
    torch.testing.assert_close(h, ln_quantize(x)[0], rtol=0, atol=8 * 1280 * torch.finfo(torch.float32).eps)
