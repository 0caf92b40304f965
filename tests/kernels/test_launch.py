"""``FastLaunch``: Triton's front door once per call signature, then the compiled kernel's launcher alone.

On the CPU the wrapped kernels are stand-ins with Triton's interfaces (a JIT function whose launch returns a
compiled kernel, an autotuner over it, heuristics), so the replay's arguments, grid, pre-hook and signature rules
are checked exactly. On CUDA every lowbit kernel is launched with the replay on and off: the outputs must be
identical bit for bit (the same binary runs) and the second launches must have been replays.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import triton.language as tl

from lowbit.kernels import _launch
from lowbit.kernels._launch import FastLaunch, set_fast_launch


class _Compiled:
    """A compiled kernel: records what its launcher was called with."""

    def __init__(self, name: str) -> None:
        self.name, self.function, self.packed_metadata, self.calls = name, f"fn:{name}", ("packed", name), []

    def run(self, *launch) -> None:
        self.calls.append(launch)

    def launch_metadata(self, grid, stream, *args):
        return None


class _Jit:
    """A JIT function: ``kernel[grid](...)`` binds the arguments, 'compiles' per call signature, launches."""

    def __init__(self, fn) -> None:
        self.fn, self.device_caches, self.pre_run_hooks = fn, {}, []
        self.arg_names = list(inspect.signature(fn).parameters)
        self.constexprs = [i for i, n in enumerate(self.arg_names) if n.isupper()]  # BLOCK, WIDE, EXTRA
        self.slow_launches, self.compiled = [], {}

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            sig = inspect.signature(self.fn).bind(*args, **kwargs)
            sig.apply_defaults()
            values = dict(sig.arguments)
            key = tuple((type(v).__name__, v.dtype) if isinstance(v, torch.Tensor) else None if isinstance(v, float)
                        else v for v in values.values())  # no specialization on a runtime float
            k = self.compiled.setdefault(key, _Compiled(str(len(self.compiled))))
            g = grid(values) if callable(grid) else grid
            self.slow_launches.append((g, values))
            k.run(*g, *(1,) * (3 - len(g)), "stream", k.function, k.packed_metadata, None, None, None,
                  *values.values())
            return k

        return launch


class _Config:
    def __init__(self, kwargs: dict, num_warps: int = 4, pre_hook=None) -> None:
        self.kwargs, self.num_warps, self.pre_hook = kwargs, num_warps, pre_hook

    def all_kwargs(self) -> dict:
        return {**self.kwargs, "num_warps": self.num_warps}


class _Autotuner:
    """Picks its first config; forwards the config's meta-parameters as keyword arguments, as Triton's does."""

    def __init__(self, fn: _Jit, configs: list[_Config]) -> None:
        self.fn, self.configs, self.best_config = fn, configs, None

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.best_config = self.configs[0]
            if self.best_config.pre_hook:
                self.best_config.pre_hook({**dict(zip(self.fn.arg_names, args)), **kwargs,
                                           **self.best_config.all_kwargs()})
            return self.fn[grid](*args, **kwargs, **self.best_config.kwargs)

        return launch


class _Heuristics:
    def __init__(self, fn, values: dict) -> None:
        self.fn, self.values, self.arg_names = fn, values, fn.arg_names

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            for v, h in self.values.items():
                kwargs[v] = h({**dict(zip(self.fn.arg_names, args)), **kwargs})
            return self.fn[grid](*args, **kwargs)

        return launch


def _kernel(x_ptr, y_ptr, n, scale, BLOCK: tl.constexpr, WIDE: tl.constexpr, EXTRA: tl.constexpr = 7):
    pass


@pytest.fixture
def fake_triton(monkeypatch):
    """The stand-ins above play Triton's JIT function, autotuner and heuristics; device 0, a named stream."""
    monkeypatch.setattr(_launch, "_is_jit", lambda k: isinstance(k, _Jit))
    monkeypatch.setattr(_launch, "_is_autotuner", lambda k: isinstance(k, _Autotuner))
    monkeypatch.setattr(_launch, "_is_heuristics", lambda k: isinstance(k, _Heuristics))
    monkeypatch.setattr(_launch, "_current_device", lambda: 0)
    monkeypatch.setattr(_launch, "_current_stream", lambda device: "stream")
    monkeypatch.setattr(_launch, "_runtime_knobs", lambda: type("R", (), {"launch_enter_hook": None,
                                                                         "launch_exit_hook": None})())
    previous = set_fast_launch(True)
    yield
    set_fast_launch(previous)


def test_tritons_own_wrappers_are_recognised() -> None:
    """Real Triton objects (built without a GPU): the JIT function under an autotuner and heuristics is found, and
    the interpreter's kernels (no JIT function) are left to Triton."""
    import triton
    from triton.runtime.jit import JITFunction

    jit = JITFunction(_kernel)
    tuned = triton.autotune(configs=[triton.Config({"BLOCK": 64})], key=["n"])(
        triton.heuristics({"WIDE": lambda a: a["n"] > 100})(jit))
    fast = FastLaunch(tuned)
    assert fast.jit is jit and fast.autotuner is tuned and len(fast.heuristics) == 1
    assert fast.names == ("x_ptr", "y_ptr", "n", "scale", "BLOCK", "WIDE", "EXTRA") and fast.defaults == {"EXTRA": 7}
    assert fast.constexpr == frozenset(jit.constexprs)
    assert FastLaunch(jit).autotuner is None and FastLaunch(jit).jit is jit
    assert FastLaunch(triton.heuristics({"WIDE": lambda a: True})(jit)).jit is jit
    assert FastLaunch(_Jit(_kernel)).jit is None  # not Triton's: never replayed


def test_replay_passes_what_triton_passes_with_config_heuristics_and_defaults(fake_triton) -> None:
    hooks = []
    jit = _Jit(_kernel)
    tuned = _Autotuner(_Heuristics(jit, {"WIDE": lambda a: a["n"] > 100}), [_Config({"BLOCK": 64}, 8, hooks.append)])
    fast = FastLaunch(tuned)
    x, y = torch.zeros(8), torch.zeros(8)
    grid = lambda meta: (meta["n"] // meta["BLOCK"] + 1, 2)  # noqa: E731
    k1 = fast[grid](x, y, 130, 0.5)  # Triton's path: compiled, kept
    k2 = fast[grid](x, y, 130, 0.5)  # Triton's path again: it must return the kept kernel (the check)
    k3 = fast[grid](x, y, 130, 0.5)  # replayed
    assert k1 is k2 is k3 and len(jit.slow_launches) == 2 and fast.launches == 3 and fast.replays == 1
    slow, _, replayed = k1.calls
    assert replayed == slow  # grid, stream, binary, every argument in order (config, heuristic, default)
    assert replayed[:3] == (3, 2, 1) and replayed[-3:] == (64, True, 7)
    assert len(hooks) == 3 and hooks[2]["BLOCK"] == 64 and hooks[2]["num_warps"] == 8 and hooks[2]["x_ptr"] is x


@pytest.mark.parametrize("change", ["int", "dtype", "alignment", "kwarg", "bool-vs-int", "float-vs-int"])
def test_a_new_signature_takes_tritons_path_again(fake_triton, change: str) -> None:
    jit = _Jit(_kernel)
    fast = FastLaunch(jit)
    buf = torch.zeros(64)
    args = [buf[:8], buf[:8], 16, 0.5]
    kwargs = {"BLOCK": 32, "WIDE": False}
    fast[(1,)](*args, **kwargs)
    if change == "int":
        args[2] = 17
    elif change == "dtype":
        args[0] = torch.zeros(8, dtype=torch.float16)
    elif change == "alignment":
        args[0] = buf[1:9]  # 4 bytes past a 16-byte boundary
    elif change == "kwarg":
        kwargs["BLOCK"] = 64
    elif change == "bool-vs-int":
        kwargs["WIDE"] = 0
    else:
        kwargs["BLOCK"] = 32.0
    fast[(1,)](*args, **kwargs)
    assert len(jit.slow_launches) == 2 and fast.replays == 0
    fast[(1,)](*args, **kwargs)  # the new signature's check
    fast[(1,)](*args, **kwargs)
    assert len(jit.slow_launches) == 3 and fast.replays == 1


def test_a_signature_that_misses_what_triton_keys_on_stops_the_replay(fake_triton) -> None:
    """If Triton compiles another kernel for a call whose signature FastLaunch has seen (a Triton that specializes
    on something more), the check at the signature's second launch catches it: a warning, and Triton's own path
    for every later launch of that kernel."""
    jit = _Jit(_kernel)
    fast = FastLaunch(jit)
    args, kwargs = (torch.zeros(8), torch.zeros(8), 16, 0.5), {"BLOCK": 32, "WIDE": False}
    fast[(1,)](*args, **kwargs)
    jit.compiled.clear()  # as if Triton keyed this call differently: a new compiled kernel comes back
    with pytest.warns(RuntimeWarning, match="another kernel"):
        fast[(1,)](*args, **kwargs)
    for _ in range(3):
        fast[(1,)](*args, **kwargs)
    assert fast.replays == 0 and len(jit.slow_launches) == 5 and fast.jit is None


def test_the_replay_launches_the_call_s_own_tensors_and_runtime_floats(fake_triton) -> None:
    jit = _Jit(_kernel)
    fast = FastLaunch(jit)
    a, b = torch.zeros(8), torch.zeros(8)
    k = fast[(1,)](a, a, 16, 0.5, BLOCK=32, WIDE=False)
    fast[(1,)](a, a, 16, 0.5, BLOCK=32, WIDE=False)  # the check
    fast[(1,)](b, a, 16, 0.25, BLOCK=32, WIDE=False)
    assert fast.replays == 1 and k.calls[2][9] is b and k.calls[2][12] == 0.25


def test_off_and_uncompiled_kernels_always_take_tritons_path(fake_triton) -> None:
    jit = _Jit(_kernel)
    fast = FastLaunch(jit)
    set_fast_launch(False)
    for _ in range(3):
        fast[(1,)](torch.zeros(8), torch.zeros(8), 16, 0.5, BLOCK=32, WIDE=False)
    assert len(jit.slow_launches) == 3 and fast.replays == 0
    set_fast_launch(True)

    class _Interpreted:  # the interpreter's kernel: no compiled kernel comes back
        arg_names = jit.arg_names
        fn = _kernel
        calls = 0

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                _Interpreted.calls += 1

            return launch

    fast = FastLaunch(_Interpreted())
    assert fast.jit is None
    for _ in range(3):
        fast[(1,)](torch.zeros(8), torch.zeros(8), 16, 0.5, BLOCK=32, WIDE=False)
    assert _Interpreted.calls == 3 and fast.replays == 0


def test_attributes_are_the_wrapped_kernel_s(fake_triton) -> None:
    tuned = _Autotuner(_Jit(_kernel), [_Config({"BLOCK": 64})])
    fast = FastLaunch(tuned)
    assert fast.configs is tuned.configs and fast.fn is tuned.fn


# ------------------------------------------------------------------------------------------------- CUDA

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _every_kernel() -> dict:
    """Each lowbit Triton launcher once, at a ViT-ish shape: name → function returning its outputs."""
    from lowbit.kernels import _triton_layernorm as tln
    from lowbit.kernels import _triton_producers as tp
    from lowbit.kernels import _triton_quant as tq
    from lowbit.kernels import blockwise
    from lowbit.kernels.gemm import gemm

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(300, 1280, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.randn(512, 1280, device="cuda", dtype=torch.bfloat16, generator=g)
    qx, sx = tq.quantize_rows(x, "int8")
    qw, sw = tq.quantize_scaled(w, "int8", False, False)
    fx, fsx = tq.quantize_rows(x, "e4m3")
    fw, fsw = tq.quantize_scaled(w, "e4m3", False, False)
    a = torch.randn(300, 512, device="cuda", dtype=torch.bfloat16, generator=g)
    lw, lb = torch.randn(1280, device="cuda"), torch.randn(1280, device="cuda")
    return {
        "quantize_rows": lambda: tq.quantize_rows(x, "e4m3"),
        "quantize_scaled+transpose": lambda: tq.quantize_scaled(x, "int8", True, True),
        "quantize_dual": lambda: tq.quantize_scaled(w, "e4m3", False, False, both=True),
        "dequantize": lambda: tq.dequantize(qx, sx, "int8", torch.bfloat16),
        "gemm int8": lambda: gemm(qx, qw, sx, sw, bias=lb[:512].bfloat16()),
        "gemm e4m3 gelu preact amax": lambda: gemm(fx, fw, fsx, fsw, activation="gelu", store_preact=True,
                                                   amax="row"),
        "gemm bf16 colsum": lambda: gemm(x, w, colsum=True),
        "act_quantize": lambda: tp.act_quantize(a, None, "gelu", "e4m3", want_out=True, colsum=False,
                                                out_dtype=torch.bfloat16),
        "act_backward_quantize colsum": lambda: tp.act_quantize(a, a, "gelu", "e4m3", want_out=True, colsum=True,
                                                                out_dtype=torch.bfloat16),
        "layernorm_quantize": lambda: tln.layernorm_quantize(x, lw.bfloat16(), lb.bfloat16(), 1e-5, "int8",
                                                             want_h=True, out_dtype=torch.bfloat16),
        "blockwise 1x128": lambda: blockwise.quantize_blockwise(x, "e4m3", blockwise.ACT_BLOCK, backend="triton"),
    }


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out if o is not None for t in _flat(o)]


@cuda
def test_cuda_replay_is_bit_identical_to_tritons_launch() -> None:
    from lowbit.kernels import _triton_gemm, _triton_layernorm, _triton_producers, _triton_quant

    wrapped = [v for m in (_triton_gemm, _triton_layernorm, _triton_producers, _triton_quant) for v in vars(m).values()
               if isinstance(v, FastLaunch)]
    for name, run in _every_kernel().items():
        set_fast_launch(False)
        ref = [t.clone() for t in _flat(run())]
        set_fast_launch(True)
        before = sum(f.replays for f in wrapped)
        run()  # the first launch of this signature: Triton's path
        run()  # the second: Triton's path again, checked against the kept kernel
        got = [t.clone() for t in _flat(run())]  # a replay
        torch.cuda.synchronize()
        assert sum(f.replays for f in wrapped) > before or name == "blockwise 1x128", name
        assert len(got) == len(ref), name
        for r, o in zip(ref, got):
            assert torch.equal(r.view(torch.uint8) if r.element_size() == 1 else r, o.view(torch.uint8)
                               if o.element_size() == 1 else o), name


@cuda
def test_cuda_replay_costs_less_host_time() -> None:
    """The point of it: a replayed GEMM launch costs the host less than Triton's path (printed, and asserted
    with a margin that host noise cannot close: at least 20 µs less per launch)."""
    import time

    from lowbit.kernels import _triton_quant as tq
    from lowbit.kernels.gemm import gemm

    x = torch.randn(64, 1280, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(512, 1280, device="cuda", dtype=torch.bfloat16)
    qx, sx = tq.quantize_rows(x, "int8")
    qw, sw = tq.quantize_scaled(w, "int8", False, False)

    def us(n: int = 500) -> float:
        gemm(qx, qw, sx, sw)
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n):
                gemm(qx, qw, sx, sw)
            best = min(best, (time.perf_counter() - t) / n * 1e6)
            torch.cuda.synchronize()
        return best

    set_fast_launch(False)
    slow = us()
    set_fast_launch(True)
    fast = us()
    print(f"int8 gemm launch, host µs per call: Triton's path {slow:.1f}, replay {fast:.1f}")
    assert fast < slow - 20
