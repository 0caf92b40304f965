"""``lowbit bench optim``: time one optimizer step of StableAdamW against torch AdamW on CLIP-sized parameters.

The parameter set is synthesised from the CLIP configuration (open_clip names and shapes, no model is built).
Timings are medians; on CUDA they come from ``triton.testing.do_bench`` (which flushes L2 before each call,
so gradients are read from HBM as after a real backward), on the CPU from a plain ``perf_counter`` loop.
Results are ratios to the baseline in the same run: torch AdamW fused on CUDA, torch AdamW foreach on CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

HELP = "time StableAdamW vs torch AdamW (foreach/fused) on a CLIP-sized parameter set"

HYPER = {"lr": 1e-3, "betas": (0.9, 0.99), "eps": 1e-6, "weight_decay": 0.1}


@dataclass(frozen=True)
class ClipShape:
    """The widths that fix a CLIP model's parameter shapes."""

    embed: int
    image: int
    patch: int
    v_width: int
    v_layers: int
    v_mlp: int
    t_width: int
    t_layers: int
    t_mlp: int
    vocab: int = 49408
    context: int = 77


PRESETS: dict[str, ClipShape] = {
    "vit-h-14": ClipShape(1024, 224, 14, 1280, 32, 5120, 1024, 24, 4096),
    "vit-l-14": ClipShape(768, 224, 14, 1024, 24, 4096, 768, 12, 3072),
    "vit-b-32": ClipShape(512, 224, 32, 768, 12, 3072, 512, 12, 2048),
    "tiny": ClipShape(32, 32, 8, 64, 2, 256, 48, 2, 192, vocab=1000, context=16),
}


def _blocks(prefix: str, width: int, layers: int, mlp: int) -> list[tuple[str, tuple[int, ...]]]:
    out: list[tuple[str, tuple[int, ...]]] = []
    for i in range(layers):
        b = f"{prefix}.resblocks.{i}"
        out += [
            (f"{b}.ln_1.weight", (width,)),
            (f"{b}.ln_1.bias", (width,)),
            (f"{b}.attn.in_proj_weight", (3 * width, width)),
            (f"{b}.attn.in_proj_bias", (3 * width,)),
            (f"{b}.attn.out_proj.weight", (width, width)),
            (f"{b}.attn.out_proj.bias", (width,)),
            (f"{b}.ln_2.weight", (width,)),
            (f"{b}.ln_2.bias", (width,)),
            (f"{b}.mlp.c_fc.weight", (mlp, width)),
            (f"{b}.mlp.c_fc.bias", (mlp,)),
            (f"{b}.mlp.c_proj.weight", (width, mlp)),
            (f"{b}.mlp.c_proj.bias", (width,)),
        ]
    return out


def clip_param_shapes(cfg: ClipShape) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every CLIP parameter, in open_clip's order and naming."""
    grid = cfg.image // cfg.patch
    v, t = cfg.v_width, cfg.t_width
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("positional_embedding", (cfg.context, t)),
        ("text_projection", (t, cfg.embed)),
        ("logit_scale", ()),
        ("visual.class_embedding", (v,)),
        ("visual.positional_embedding", (grid * grid + 1, v)),
        ("visual.proj", (v, cfg.embed)),
        ("visual.conv1.weight", (v, 3, cfg.patch, cfg.patch)),
        ("visual.ln_pre.weight", (v,)),
        ("visual.ln_pre.bias", (v,)),
    ]
    shapes += _blocks("visual.transformer", v, cfg.v_layers, cfg.v_mlp)
    shapes += [("visual.ln_post.weight", (v,)), ("visual.ln_post.bias", (v,))]
    shapes += _blocks("transformer", t, cfg.t_layers, cfg.t_mlp)
    shapes += [
        ("token_embedding.weight", (cfg.vocab, t)),
        ("ln_final.weight", (t,)),
        ("ln_final.bias", (t,)),
    ]
    return shapes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="vit-h-14", help="CLIP parameter set")
    parser.add_argument("--device", default="auto", help="auto | cuda | cpu")
    parser.add_argument(
        "--dtype",
        nargs="+",
        default=None,
        choices=["fp32", "bf16", "bf16-fp32state"],
        help="parameter dtype(s); bf16-fp32state = bf16 params with fp32 StableAdamW moments "
        "(default: fp32 bf16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument("--impls", nargs="+", default=None, help="subset of implementation names to run")
    parser.add_argument("--with-reference", action="store_true", help="also time the per-tensor reference")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps on the CPU")
    parser.add_argument(
        "--rep-ms", type=int, default=500, help="do_bench measuring time per implementation (CUDA)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--l2-budget-mb",
        type=float,
        nargs="+",
        default=None,
        help="fused StableAdamW: g+v bytes read between a tensor's phase 1 and phase 2 "
        "(several values = several rows; default: the built-in budget, one row)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write optim-*.json and optim-*.md here")


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    return dev


def _impls(device: torch.device, dtype: str, budgets: list[float] | None, with_reference: bool):
    """name → factory(params) building the optimizer; unavailable anchors are reported, not timed."""
    from lowbit.optim import StableAdamW
    from lowbit.optim import _fused as fused_mod

    sdt = torch.float32 if dtype == "bf16-fp32state" else None
    out: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {}
    missing: dict[str, str] = {}
    if sdt is None:
        out["torch AdamW foreach"] = lambda ps: torch.optim.AdamW(ps, **HYPER, foreach=True)
        out["torch AdamW fused"] = lambda ps: torch.optim.AdamW(ps, **HYPER, fused=True)
    out["StableAdamW foreach"] = lambda ps: StableAdamW(ps, **HYPER, foreach=True, state_dtype=sdt)
    if with_reference:
        out["StableAdamW reference"] = lambda ps: StableAdamW(ps, **HYPER, foreach=False, state_dtype=sdt)
    if device.type == "cuda":
        for mb in budgets or [fused_mod.config.l2_budget_bytes / 2**20]:
            name = "StableAdamW fused" if budgets is None else f"StableAdamW fused (L2 budget {mb:g} MB)"

            def make(ps, mb=mb):
                fused_mod.config.l2_budget_bytes = int(mb * 2**20)
                return StableAdamW(ps, **HYPER, fused=True, state_dtype=sdt)

            out[name] = make
    else:
        missing["StableAdamW fused"] = "needs CUDA"
    if sdt is None:
        try:
            import optimi  # torch-optimi

            out["optimi StableAdamW foreach"] = lambda ps: optimi.StableAdamW(
                ps, **HYPER, foreach=True, triton=False
            )
            if device.type == "cuda":
                out["optimi StableAdamW triton"] = lambda ps: optimi.StableAdamW(ps, **HYPER, triton=True)
        except ImportError:
            missing["optimi StableAdamW"] = "torch-optimi not installed (pip install torch-optimi)"
        try:
            import pytorch_optimizer

            out["pytorch-optimizer StableAdamW"] = lambda ps: pytorch_optimizer.StableAdamW(ps, **HYPER)
        except ImportError:
            missing["pytorch-optimizer StableAdamW"] = (
                "pytorch-optimizer not installed (pip install pytorch-optimizer)"
            )
    return out, missing


def _time_step(step: Callable[[], Any], device: torch.device, args: argparse.Namespace) -> dict[str, float]:
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        import triton.testing

        torch.cuda.synchronize()
        ms = triton.testing.do_bench(step, warmup=0, rep=args.rep_ms, return_mode="median")
        return {"median_ms": float(ms)}
    times = []
    for _ in range(max(1, args.repeats)):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


def bench_one(preset: str, device: torch.device, dtype: str, args: argparse.Namespace) -> dict[str, Any]:
    """Time every implementation on one parameter set; returns a JSON-able record."""
    shapes = clip_param_shapes(PRESETS[preset])
    pdt = torch.float32 if dtype == "fp32" else torch.bfloat16
    gen = torch.Generator(device="cpu").manual_seed(0)
    params = []
    for _, shape in shapes:
        p = torch.empty(shape, dtype=pdt, device=device)
        p.copy_(torch.randn(shape, generator=gen) * 0.02)
        p.grad = (torch.randn(shape, generator=gen) * 1e-3).to(device=device, dtype=pdt)
        params.append(p)
    n_params = sum(p.numel() for p in params)
    impls, missing = _impls(device, dtype, args.l2_budget_mb, args.with_reference)
    if args.impls:
        impls = {k: v for k, v in impls.items() if k in args.impls}
    rows: list[dict[str, Any]] = []
    from lowbit.optim import _fused as fused_mod

    saved_budget = fused_mod.config.l2_budget_bytes
    for name, make in impls.items():
        try:
            opt = make(params)
            row = {"impl": name, **_time_step(opt.step, device, args)}
        except Exception as exc:  # an anchor that fails must not sink the whole benchmark
            row = {"impl": name, "error": f"{type(exc).__name__}: {exc}"}
        rows.append(row)
        opt = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    fused_mod.config.l2_budget_bytes = saved_budget
    base_name = "torch AdamW fused" if device.type == "cuda" else "torch AdamW foreach"
    base = next((r.get("median_ms") for r in rows if r["impl"] == base_name), None)
    if base is None:  # bf16 params with fp32 moments: compare with torch on bf16 params and bf16 moments
        base_name = "StableAdamW foreach"
        base = next((r.get("median_ms") for r in rows if r["impl"] == base_name), None)
    elsize = torch.empty((), dtype=pdt).element_size()
    for r in rows:
        if "median_ms" in r and base:
            r["ratio"] = r["median_ms"] / base
            # bytes AdamW must move (read p,g,m,v; write p,m,v) over the time: an effective bandwidth
            r["adamw_equiv_GBps"] = 7 * elsize * n_params / (r["median_ms"] * 1e-3) / 1e9
    return {
        "preset": preset,
        "dtype": dtype,
        "n_params": n_params,
        "n_tensors": len(params),
        "baseline": base_name,
        "results": rows,
        "not_run": missing,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _env(device: torch.device) -> dict[str, Any]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    from lowbit.optim import _fused as fused_mod

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "fused_config": {
            k: v for k, v in vars(fused_mod.config).items() if k != "cache" and not k.startswith("_")
        },
    }


def to_markdown(env: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """A markdown report: one table per dtype, ratios to the baseline."""
    lines = [
        "# lowbit bench optim",
        "",
        f"device: {env['device_name']} ({env['device']}), torch {env['torch']}, triton {env['triton']}, "
        f"CPU threads {env['cpu_threads']}",
        "",
    ]
    for rec in records:
        lines += [
            f"## {rec['preset']}, {rec['dtype']} ({rec['n_params'] / 1e6:.1f} M params, "
            f"{rec['n_tensors']} tensors); ratio to {rec['baseline']}",
            "",
            "| implementation | median ms | ratio | AdamW-equivalent GB/s |",
            "|---|---:|---:|---:|",
        ]
        for r in rec["results"]:
            if "error" in r:
                lines.append(f"| {r['impl']} | error: {r['error']} | | |")
            else:
                ratio = f"{r['ratio']:.3f}" if "ratio" in r else "-"
                bw = f"{r['adamw_equiv_GBps']:.0f}" if "adamw_equiv_GBps" in r else "-"
                lines.append(f"| {r['impl']} | {r['median_ms']:.3f} | {ratio} | {bw} |")
        for name, why in rec["not_run"].items():
            lines.append(f"| {name} | not run: {why} | | |")
        lines.append("")
    return "\n".join(lines)


def compact_table(records: list[dict[str, Any]]) -> str:
    """One row per implementation, one ``ms (ratio)`` column per dtype: the whole run at a glance."""
    names: list[str] = []
    for rec in records:
        for r in rec["results"]:
            if r["impl"] not in names:
                names.append(r["impl"])
    heads = [f"{rec['dtype']} ms (ratio)" for rec in records]
    lines = [
        f"## summary: {records[0]['preset']}, ratio to {records[0]['baseline']}" if records else "## summary",
        "",
        "| implementation | " + " | ".join(heads) + " |",
        "|---|" + "---:|" * len(heads),
    ]
    for name in names:
        cells = []
        for rec in records:
            r = next((x for x in rec["results"] if x["impl"] == name), None)
            if r is None:
                cells.append("")
            elif "error" in r:
                cells.append("error")
            else:
                ratio = f" ({r['ratio']:.2f})" if "ratio" in r else ""
                cells.append(f"{r['median_ms']:.2f}{ratio}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Entry point of ``lowbit bench optim``."""
    device = _resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = args.dtype or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    env = _env(device)
    records = [bench_one(args.preset, device, dt, args) for dt in dtypes]
    md = to_markdown(env, records) + "\n" + compact_table(records)
    print(md)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"optim-{args.preset}-{device.type}"
        payload = {"env": env, "records": records}
        (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        (args.out / f"{stem}.md").write_text(md + "\n")
        print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m lowbit.bench.optim`` (until the CLI wires ``lowbit bench optim``)."""
    parser = argparse.ArgumentParser(prog="lowbit bench optim", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
