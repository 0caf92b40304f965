"""``lowbit bench linear | mlp | matmul | memory``: recipes against bf16 ``nn.Linear`` at CLIP shapes.

* ``linear``: forward + backward of one layer (d→4d and 4d→d), each recipe's time as a ratio to bf16
  ``nn.Linear`` measured in the same run (eager, and compiled with ``--compile``).
* ``mlp``: the transformer MLP block forward + backward: ``x + fc2(GELU(fc1(LayerNorm(x))))`` (``--block ln-mlp``,
  the default: a pre-norm transformer's MLP half, LayerNorm fused into fc1's quantization where the recipe runs
  fused) or ``fc2(GELU(fc1(x)))`` (``--block mlp``). Plain PyTorch bf16 (``nn.LayerNorm``, ``nn.Linear``,
  ``nn.GELU``) is the baseline; ``bf16`` is lowbit's own fused 16-bit path, so the fusion gain and the 8-bit gain
  read apart; ``RECIPE:per-linear`` converts each linear on its own. Peak memory per row.
* ``matmul``: TFLOP/s of the int8 / fp8 kernels (dequantize + bias fused) against cuBLAS bf16,
  ``torch._int_mm`` and ``torch._scaled_mm``; and the quantize kernels' bandwidth.
* ``memory``: bytes each recipe saves for the backward (autograd saved-tensor hooks), as a ratio to bf16.

Timings are medians of many runs after warm-up (``triton.testing.do_bench`` on CUDA). When torchao is
installed, its float8 (tensorwise, rowwise) and int8 mixed-precision linears join the tables as anchors.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lowbit.bench.common import bench, environment, markdown_table, save_results, split_recipe, write_results
from lowbit.kernels import ops

# name: (width d, MLP width 4d, tokens per GPU batch) — CLIP towers at their usual per-GPU batch.
SHAPES: dict[str, tuple[int, int, int]] = {
    "vit-b-32": (768, 3072, 256 * 50),
    "vit-l-14": (1024, 4096, 256 * 257),
    "vit-h-14": (1280, 5120, 128 * 257),
    "llm": (4096, 16384, 16384),
}
DEFAULT_RECIPES = ["switchback", "switchback-q", "switchback-m", "int8-all", "llm-int8",
                   "fp8-switchback", "fp8-tensorwise", "fp8-rowwise"]


def _torchao_variants() -> dict[str, Callable[[nn.Module], nn.Module]]:
    """torchao's training linears, when torchao is importable (anchors only)."""
    out: dict[str, Callable[[nn.Module], nn.Module]] = {}
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except Exception:
        return out
    out["torchao-float8-tensorwise"] = lambda m: convert_to_float8_training(m)
    out["torchao-float8-rowwise"] = lambda m: convert_to_float8_training(
        m, config=Float8LinearConfig.from_recipe_name("rowwise"))
    try:
        from torchao import quantize_
        from torchao.prototype.quantized_training import int8_mixed_precision_training

        def _int8mp(m: nn.Module) -> nn.Module:
            quantize_(m, int8_mixed_precision_training())
            return m

        out["torchao-int8-mixed"] = _int8mp
    except Exception:
        pass
    return out


class LNMLPBlock(nn.Module):
    """A pre-norm transformer's MLP half: ``x + mlp(ln(x))`` with ``mlp = Linear → GELU → Linear``."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.ln(x))


BLOCKS = ("ln-mlp", "mlp")


def _make(kind: str, d_in: int, d_out: int, device, dtype, mlp_hidden: int | None = None,
          block: str = "mlp") -> nn.Module:
    """A bf16 layer (or MLP block) converted to ``kind``: ``nn.Linear``, a lowbit recipe, or a torchao anchor.

    ``block="ln-mlp"`` (with ``mlp_hidden``): :class:`LNMLPBlock`; a fused recipe also fuses its LayerNorm
    (``LayerNormMLP``)."""
    from lowbit.nn import convert, fuse_layernorm

    if mlp_hidden is None:
        m: nn.Module = nn.Sequential(nn.Linear(d_in, d_out))
    elif block == "ln-mlp":
        m = LNMLPBlock(d_in, mlp_hidden)
    else:
        m = nn.Sequential(nn.Linear(d_in, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, d_in))
    m = m.to(device=device, dtype=dtype)
    if kind == "nn.Linear":
        return m
    anchors = _torchao_variants()
    if kind in anchors:
        return anchors[kind](m)
    # "RECIPE:per-linear" converts each nn.Linear on its own; a plain recipe name (or "RECIPE:fused") fuses
    # Linear → GELU → Linear into one LowbitMLP.
    recipe, fuse = split_recipe(kind, True)
    m = convert(m, recipe, module_filter=lambda fqn, mod: True, fuse=fuse)
    if isinstance(m, LNMLPBlock) and fuse:
        why = fuse_layernorm(m, "ln", "mlp")
        if why is not None:
            raise RuntimeError(f"bench mlp: LayerNorm not fused for {kind}: {why}")
    return m


# Timing modes: eager; torch.compile (default mode); CUDA graphs of the eager module's forward and backward
# (torch.cuda.make_graphed_callables), which removes the per-launch CPU cost (Python + driver) that bounds
# small layers.
MODES = ("eager", "compiled", "cudagraphs")


def _fwd_bwd(module: nn.Module, tokens: int, d_in: int, device, dtype, mode: bool | str):
    """(fwd+bwd closure, tensors whose grads to reset); ``mode`` is one of MODES (True/False: compiled/eager)."""
    mode = {False: "eager", True: "compiled"}.get(mode, mode)  # type: ignore[call-overload]
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    x = torch.randn(tokens, d_in, device=device, dtype=dtype, requires_grad=True)
    with torch.no_grad():
        d_out = module(x[:1]).shape[-1]
    g = torch.randn(tokens, d_out, device=device, dtype=dtype)
    if mode == "cudagraphs":
        fn_module = torch.cuda.make_graphed_callables(module, (x,))
    else:
        fn_module = torch.compile(module) if mode == "compiled" else module

    def step() -> None:
        fn_module(x).backward(g)

    return step, [x, *module.parameters()]


def mlp_step(kind: str, shape: str, mode: bool | str = "eager", device="cuda", dtype=torch.bfloat16,
             block: str = "mlp"):
    """One fwd+bwd of the MLP block of ``kind`` at preset ``shape``, grads reset after it (for profiling)."""
    d_in, hidden, tokens = SHAPES[shape]
    step, tensors = _fwd_bwd(_make(kind, d_in, d_in, device, dtype, hidden, block), tokens, d_in, device, dtype,
                             mode)

    def one() -> None:
        step()
        for t in tensors:
            t.grad = None

    return one


def profile_mlp_step(kind: str, shape: str, mode: bool | str = "eager", block: str = "mlp", warmup: int = 3,
                     steps: int = 3) -> torch.profiler.profile:
    """``torch.profiler`` (CUDA activity) over ``steps`` fwd+bwd of :func:`mlp_step` after ``warmup`` untimed ones:
    the per-kernel tables of the probes (``bench/probes/profile_mlp.py``, ``row_flow.py``)."""
    from torch.profiler import ProfilerActivity, profile

    step = mlp_step(kind, shape, mode, block=block)
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    return prof


def time_block(kind: str, d_in: int, d_out: int, tokens: int, device, dtype=torch.bfloat16,
               mode: bool | str = "eager", mlp_hidden: int | None = None, block: str = "mlp",
               peak: bool = False) -> tuple[float, float | None]:
    """(median ms of one fwd+bwd, peak GiB): with ``peak`` on CUDA, the most memory allocated during one more step
    (inputs, parameters and gradients included), else None."""
    module = _make(kind, d_in, d_out, device, dtype, mlp_hidden, block)
    step, grads = _fwd_bwd(module, tokens, d_in, device, dtype, mode)
    ms = bench(step, device, grad_to_none=grads)
    gib = None
    if peak and device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        gib = torch.cuda.max_memory_allocated(device) / 2**30
    del module, step, grads
    return ms, gib


def _kinds(recipes: list[str]) -> list[str]:
    return ["nn.Linear", *recipes, *_torchao_variants()]


def _variants(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(timing mode, compiled-quantize mode) pairs: eager, then compiled once per requested quantize mode, then
    CUDA graphs of the eager module."""
    quants = list(dict.fromkeys(getattr(args, "compiled_quantize", None) or [ops.compiled_quantize()]))
    return ([("eager", None)] + ([("compiled", q) for q in quants] if args.compile else [])
            + ([("cudagraphs", None)] if args.cudagraphs else []))


def run_linear(args: argparse.Namespace, mlp: bool) -> dict[str, Any]:
    device = torch.device(args.device)
    if getattr(args, "cudagraphs", False) and device.type != "cuda":
        raise ValueError(f"--cudagraphs needs a CUDA device, got --device {args.device}")
    rows: list[dict[str, Any]] = []
    name, env = ("mlp" if mlp else "linear"), environment(device)
    for shape in args.shapes:
        d, d4, tokens = SHAPES[shape]
        tokens = args.tokens or tokens
        block = getattr(args, "block", "mlp") if mlp else "mlp"
        layers = [(block, d, d, d4)] if mlp else [("fc1", d, d4, None), ("fc2", d4, d, None)]
        for layer, d_in, d_out, hidden in layers:
            for mode, quant in _variants(args):
                label = mode if quant in (None, "kernel") else f"{mode} ({quant} quantize)"
                base, base_gib = time_block("nn.Linear", d_in, d_out, tokens, device, mode=mode, mlp_hidden=hidden,
                                            block=block, peak=True)
                for kind in _kinds(args.recipes):
                    try:
                        with ops.compiled_quantize_mode(quant or ops.compiled_quantize()):
                            torch._dynamo.reset()  # the mode is read while tracing: a fresh compile per row
                            ms, gib = (base, base_gib) if kind == "nn.Linear" else time_block(
                                kind, d_in, d_out, tokens, device, mode=mode, mlp_hidden=hidden, block=block,
                                peak=True)
                        err = None
                    except Exception as e:  # a recipe that cannot run here is reported, not fatal
                        ms, gib, err = float("nan"), None, f"{type(e).__name__}: {e}"[:160]
                    rows.append({"shape": shape, "layer": layer, "tokens": tokens,
                                 "dims": f"{d_in}→{hidden or d_out}" + (f"→{d_out}" if hidden else ""),
                                 "mode": label, "kind": kind, "ms": ms,
                                 "speedup_vs_bf16": base / ms if ms == ms else None,
                                 "peak_GiB": gib, "error": err})
                    print(f"{shape} {layer} {rows[-1]['mode']} {kind}: {ms:.3f} ms "
                          f"({rows[-1]['speedup_vs_bf16'] or 0:.2f}x)" + (f" [{err}]" if err else ""), flush=True)
                    if getattr(args, "out", None):  # a run cut short keeps its rows
                        save_results(args.out, name, {"env": env, "rows": rows}, markdown_table(rows, _COLUMNS[name]))
    return {"rows": rows}


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Speed-up of each recipe vs bf16 as the width grows (d→4d and 4d→d), to place convert()'s threshold."""
    device = torch.device(args.device)
    rows = []
    tokens = args.tokens or 32768
    for d in args.widths:
        for layer, d_in, d_out in (("fc1", d, 4 * d), ("fc2", 4 * d, d), ("square", d, d)):
            base, _ = time_block("nn.Linear", d_in, d_out, tokens, device)
            for kind in args.recipes:
                ms, _ = time_block(kind, d_in, d_out, tokens, device)
                rows.append({"width": d, "layer": layer, "dims": f"{d_in}→{d_out}", "tokens": tokens,
                             "kind": kind, "ms": ms, "bf16_ms": base, "speedup_vs_bf16": base / ms})
                print(rows[-1], flush=True)
    return {"rows": rows}


def matmul_backend(device: torch.device) -> str:
    """The backend of every "lowbit gemm" row: lowbit's Triton kernel, pinned (``backend="auto"`` may pick cuBLAS
    for fp8, which would then run under lowbit's name); the PyTorch reference where Triton cannot run (the CPU)."""
    from lowbit.kernels._common import triton_available

    return "triton" if device.type == "cuda" and triton_available() else "torch"


MATMUL_SHAPES = [(32896, 1280, 5120), (32896, 5120, 1280), (65792, 1024, 4096), (65792, 4096, 1024),
                 (12800, 768, 3072), (8192, 8192, 8192)]  # (M, K, N): ViT-H, ViT-L and ViT-B layers, a square


def run_matmul(args: argparse.Namespace, shapes: list[tuple[int, int, int]] | None = None) -> dict[str, Any]:
    """TFLOP/s of the quantized matmuls (epilogue included) and GB/s of the quantize kernels. A row named "lowbit
    gemm" runs lowbit's Triton kernel (``backend="triton"``), never cuBLAS behind its name; the row's ``backend``
    column says what ran."""
    from lowbit.kernels import quantize
    from lowbit.kernels.blockwise import ACT_BLOCK, WEIGHT_BLOCK, quantize_blockwise
    from lowbit.kernels.gemm import gemm
    from lowbit.kernels.matmul import scaled_mm

    device = torch.device(args.device)
    lowbit_backend = matmul_backend(device)
    rows = []
    shapes = shapes or MATMUL_SHAPES
    fp8_ok = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
    for M, K, N in shapes:
        a = torch.randn(M, K, device=device, dtype=torch.bfloat16)
        b = torch.randn(N, K, device=device, dtype=torch.bfloat16)
        bias = torch.randn(N, device=device, dtype=torch.bfloat16)
        flops = 2 * M * N * K
        q8a, s8a = quantize(a, "int8", "row")
        q8b, s8b = quantize(b, "int8", "tensor")
        cands: dict[str, Callable[[], Any]] = {
            "bf16 cuBLAS (F.linear)": lambda: torch.nn.functional.linear(a, b, bias),
            "int8 torch._int_mm": lambda: torch._int_mm(q8a, q8b.t()),
            "int8 lowbit gemm (+dequant+bias)": lambda: scaled_mm(q8a, q8b, s8a, s8b, bias=bias, backend=lowbit_backend),
        }
        if fp8_ok:
            qfa, sfa = quantize(a, "e4m3", "row")
            qfb, sfb = quantize(b, "e4m3", "row")
            cands["fp8 torch._scaled_mm rowwise"] = lambda: scaled_mm(qfa, qfb, sfa, sfb, bias=bias,
                                                                     backend="cublas")
            cands["fp8 lowbit gemm rowwise (+bias)"] = lambda: scaled_mm(qfa, qfb, sfa, sfb, bias=bias, backend=lowbit_backend)
            qta, sta = quantize(a, "e4m3", "tensor")
            qtb, stb = quantize(b, "e4m3", "tensor")
            cands["fp8 torch._scaled_mm tensorwise"] = lambda: scaled_mm(qta, qtb, sta, stb, bias=bias,
                                                                        backend="cublas")
            cands["fp8 lowbit gemm tensorwise (+bias)"] = lambda: scaled_mm(qta, qtb, sta, stb, bias=bias,
                                                                         backend=lowbit_backend)
        if fp8_ok:
            pre = torch.randn(M, N, device=device, dtype=torch.bfloat16)
            hooks = dict(bias=bias, activation="gelu", store_preact=True, amax="row")
            cands["int8 lowbit gemm +bias+GELU+preact+row absmax"] = lambda: gemm(q8a, q8b, s8a, s8b, **hooks, backend=lowbit_backend)
            cands["fp8 lowbit gemm +bias+GELU+preact+row absmax"] = lambda: gemm(qfa, qtb, sfa, stb, **hooks, backend=lowbit_backend)
            cands["fp8 lowbit gemm dgrad ×GELU'(preact)+colsum+row absmax"] = lambda: gemm(
                qfa, qtb, sfa, stb, activation="gelu", act_grad_at=pre, colsum=True, amax="row", backend=lowbit_backend)
            ba, bsa = quantize_blockwise(a, "e4m3", ACT_BLOCK)
            bb, bsb = quantize_blockwise(b, "e4m3", WEIGHT_BLOCK)
            cands["fp8 lowbit gemm 1×128 / 128×128 block scales +bias"] = lambda: gemm(
                ba, bb, bsa, bsb, bias=bias, blockwise=True, backend=lowbit_backend)
            cands["fp8 lowbit gemm quantize-on-load (bf16 A, row scale) +bias"] = lambda: gemm(
                a, qtb, sfa, stb, bias=bias, quantize_a="e4m3", backend=lowbit_backend)
        base = None
        for name, fn in cands.items():
            ms = bench(fn, device)
            tflops = flops / ms / 1e9
            base = base or tflops
            ran = lowbit_backend if "lowbit" in name else ("cuBLAS" if "torch." in name or "cuBLAS" in name else "")
            rows.append({"M×K×N": f"{M}×{K}×{N}", "kernel": name, "backend": ran, "ms": ms, "TFLOP/s": tflops,
                         "vs_bf16": tflops / base})
            print(rows[-1], flush=True)
        for fmt in ("int8", "e4m3") if fp8_ok else ("int8",):
            ms = bench(lambda fmt=fmt: quantize(a, fmt, "row"), device)
            gbs = (a.numel() * 2 + a.numel() + M * 4) / ms / 1e6
            rows.append({"M×K×N": f"{M}×{K}", "kernel": f"quantize {fmt} row-wise (bf16 in)", "ms": ms,
                         "GB/s": gbs})
            print(rows[-1], flush=True)
        ms = bench(lambda: quantize(b, "int8", "tensor", transpose=True), device)
        rows.append({"M×K×N": f"{N}×{K}", "kernel": "quantize int8 tensor-wise + transpose (W)", "ms": ms,
                     "GB/s": (b.numel() * 3) / ms / 1e6})
    rows += _breakdown(device, fp8_ok)
    return {"rows": rows}


def _breakdown(device, fp8_ok: bool) -> list[dict[str, Any]]:
    """Where a SwitchBack layer's time goes (ViT-H fc1, 32896 tokens, 1280→5120): each step alone."""
    from lowbit.kernels import quantize
    from lowbit.kernels.matmul import scaled_mm

    T, d_in, d_out = 32896, 1280, 5120
    x = torch.randn(T, d_in, device=device, dtype=torch.bfloat16)
    w = torch.randn(d_out, d_in, device=device, dtype=torch.bfloat16)
    dy = torch.randn(T, d_out, device=device, dtype=torch.bfloat16)
    rows = []
    fmts = ["int8", "e4m3"] if fp8_ok else ["int8"]
    for fmt in fmts:
        gfmt = "e5m2" if fmt == "e4m3" else fmt
        qx, sx = quantize(x, fmt, "row")
        qw, sw = quantize(w, fmt, "tensor")
        qdy, sdy = quantize(dy, gfmt, "row")
        qwt, swt = quantize(w, fmt, "tensor", transpose=True)
        steps = {
            "fwd: quantize X row-wise": lambda: quantize(x, fmt, "row"),
            "fwd: quantize W tensor-wise": lambda: quantize(w, fmt, "tensor"),
            "fwd: matmul (+dequant+bias)": lambda: scaled_mm(qx, qw, sx, sw),
            "dgrad: quantize dY row-wise": lambda: quantize(dy, gfmt, "row"),
            "dgrad: quantize+transpose W": lambda: quantize(w, fmt, "tensor", transpose=True),
            "dgrad: matmul": lambda: scaled_mm(qdy, qwt, sdy, swt),
            "wgrad: bf16 cuBLAS dYᵀX": lambda: dy.t() @ x,
            "bf16 forward F.linear": lambda: torch.nn.functional.linear(x, w),
            "bf16 dgrad dY W": lambda: dy @ w,
        }
        for name, fn in steps.items():
            rows.append({"M×K×N": f"breakdown {fmt} {T}×{d_in}→{d_out}", "kernel": name, "ms": bench(fn, device)})
            print(rows[-1], flush=True)
    # Row-quantization block shapes for the widest operand (dY, 5120 wide): informs _row_blocks.
    from lowbit.kernels import _triton_quant as triton_quant

    default = triton_quant._row_blocks
    for cfg in [(1, 8192, True, 8), (1, 8192, True, 16), (2, 8192, True, 16), (1, 2048, False, 8),
                (2, 2048, False, 8), (4, 1024, False, 8)]:
        triton_quant._row_blocks = lambda K, cfg=cfg: cfg
        try:
            ms = bench(lambda: quantize(dy, "int8", "row"), device)
        finally:
            triton_quant._row_blocks = default
        rows.append({"M×K×N": f"row-quant config {T}×{d_out}", "kernel": f"BLOCK_M,BLOCK_K,one_pass,warps={cfg}",
                     "ms": ms, "GB/s": dy.numel() * 3 / ms / 1e6})
        print(rows[-1], flush=True)
    return rows


def saved_bytes(kind: str, d_in: int, d_out: int, tokens: int, device, dtype=torch.bfloat16) -> int:
    """Bytes autograd keeps for the backward of one layer's forward (parameters excluded)."""
    module = _make(kind, d_in, d_out, device, dtype)
    params = {p.data_ptr() for p in module.parameters()}
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    x = torch.randn(tokens, d_in, device=device, dtype=dtype, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return total


def run_memory(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    rows = []
    for shape in args.shapes:
        d, d4, tokens = SHAPES[shape]
        tokens = min(args.tokens or tokens, 4096) if device.type == "cpu" else (args.tokens or tokens)
        base = saved_bytes("nn.Linear", d, d4, tokens, device)
        for kind in ["nn.Linear", *args.recipes]:
            b = saved_bytes(kind, d, d4, tokens, device)
            rows.append({"shape": shape, "dims": f"{d}→{d4}", "tokens": tokens, "kind": kind, "saved_MiB": b / 2**20,
                         "vs_bf16": b / base, "saving": 1 - b / base})
    return {"rows": rows}


def cpu_flops(args: argparse.Namespace) -> float | None:
    """Matmul FLOPs this command runs at least (every row: a warm-up call and five timed ones, forward + backward =
    3 x forward), for ``lowbit bench``'s CPU estimate; None for ``memory`` (one forward per row, no timing)."""
    calls = 6
    kinds = 1 + len(args.recipes)
    if args.what in ("linear", "mlp"):
        total = 0.0
        for shape in args.shapes:
            d, d4, tokens = SHAPES[shape]
            total += len(_variants(args)) * kinds * calls * 3 * 2 * 2 * (args.tokens or tokens) * d * d4
        return total  # linear: fc1 and fc2, one d x 4d matmul each; mlp: one block of two
    if args.what == "sweep":
        tokens = args.tokens or 32768
        return sum(calls * kinds * 3 * 2 * tokens * (4 * d * d + 4 * d * d + d * d) for d in args.widths)
    if args.what == "matmul":
        return sum(calls * 3 * 2 * m * k * n for m, k, n in MATMUL_SHAPES)  # bf16, _int_mm and lowbit's int8 rows
    return None


WHAT = {
    "linear": "one linear layer fwd+bwd per recipe vs bf16 nn.Linear at CLIP shapes",
    "mlp": "the MLP block (LayerNorm-Linear-GELU-Linear + residual) fwd+bwd per recipe vs plain PyTorch bf16",
    "matmul": "TFLOP/s of the int8/fp8 kernels vs cuBLAS bf16, torch._int_mm, torch._scaled_mm",
    "memory": "bytes saved for the backward per recipe",
    "sweep": "speed-up vs width, to place convert()'s size threshold",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES)
    parser.add_argument("--tokens", type=int, default=None, help="override the token count of every shape")
    parser.add_argument("--widths", nargs="+", type=int, default=[256, 384, 512, 768, 1024],
                        help="widths for `sweep`")
    parser.add_argument("--block", choices=BLOCKS, default="ln-mlp",
                        help="mlp: what `bench mlp` times: x + MLP(LayerNorm(x)) (ln-mlp) or MLP(x) (mlp)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd modules")
    parser.add_argument("--compiled-quantize", nargs="+", choices=list(ops.COMPILED_QUANTIZE), default=None,
                        help="with --compile: time lowbit recipes with their quantize kernels (kernel) and/or with the "
                             "quantizers traced for inductor to fuse (inductor); one row set per mode")
    parser.add_argument("--cudagraphs", action="store_true",
                        help="also time CUDA graphs of fwd and bwd (make_graphed_callables: no per-launch CPU cost)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="directory for NAME.json and NAME.md")


_COLUMNS = {
    "linear": ["shape", "layer", "dims", "tokens", "mode", "kind", "ms", "speedup_vs_bf16", "error"],
    "mlp": ["shape", "layer", "dims", "tokens", "mode", "kind", "ms", "speedup_vs_bf16", "peak_GiB", "error"],
    "matmul": ["M×K×N", "kernel", "backend", "ms", "TFLOP/s", "vs_bf16", "GB/s"],
    "memory": ["shape", "dims", "tokens", "kind", "saved_MiB", "vs_bf16", "saving"],
    "sweep": ["width", "layer", "dims", "tokens", "kind", "ms", "bf16_ms", "speedup_vs_bf16"],
}


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    runners = {"linear": lambda: run_linear(args, mlp=False), "mlp": lambda: run_linear(args, mlp=True),
               "matmul": lambda: run_matmul(args), "memory": lambda: run_memory(args), "sweep": lambda: run_sweep(args)}
    result = runners[args.what]()
    payload = {"env": environment(device), "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
               **result}
    write_results(args.out, args.what, payload, markdown_table(result["rows"], _COLUMNS[args.what]))
    return 0
