#!/usr/bin/env python3
"""Registers, spills and instructions per element of the quantizing producers' launch candidates, offline: no GPU.

Triton compiles each candidate for sm_90 with its bundled ptxas, and ``cuobjdump`` / ``nvdisasm`` (shipped in the same
wheel) read the cubin. The producers are issue-bound at CLIP widths (``docs/results.md``, issue #28 session 6), so
thread-instructions per useful element is the figure to cut before spending device time: it found the 37% masked
lanes of a 5120-wide row in an 8192-lane block (77 per element against 47 for the 4096 + 1024 pieces).

    PYTHONPATH=src python bench/probes/sass_producers.py --widths 5120 1664     # every candidate the autotuner keeps
    PYTHONPATH=src python bench/probes/sass_producers.py --layernorm 1280       # the LayerNorm producer

The counts are static (a loop body counts once; a row in several chunks is looped over); compare candidates of one
kind, and measure on the GPU before keeping one.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
TARGET = GPUTarget("cuda", 90, 32)
ACT_SIGNATURE = {"a_ptr": "*bf16", "dg_ptr": "*bf16", "out_ptr": "*bf16", "q_ptr": "*u8", "s_ptr": "*fp32",
                 "colsum_ptr": "*fp32", "M": "i32", "N": "i32"}
LN_SIGNATURE = {"x_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*bf16", "h_ptr": "*bf16", "q_ptr": "*u8",
                "s_ptr": "*fp32", "mean_ptr": "*fp32", "rstd_ptr": "*fp32", "M": "i32", "D": "i32",
                "stride_xm": "i32", "eps": "fp32"}


def sass_stats(fn, signature: dict, constexprs: dict, num_warps: int, aligned: tuple[int, ...]) -> dict:
    """``{"regs", "stack", "instructions", "ops"}`` of ``fn`` compiled for sm_90 (``aligned``: the argument indices
    Triton would see as multiples of 16, as it specialises them at a real launch)."""
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    sig = dict(signature, **{k: "constexpr" for k in constexprs})
    compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs), target=TARGET,
                              options={"num_warps": num_warps})
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([str(BIN / "cuobjdump"), "--dump-resource-usage", str(cubin)], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([str(BIN / "nvdisasm"), "-c", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
    ops = collections.Counter(m.group(1).split(".")[0] for m in re.finditer(
        r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)", sass))
    return {"regs": int(re.search(r"REG:(\d+)", usage).group(1)), "stack": int(re.search(r"STACK:(\d+)", usage).group(1)),
            "instructions": sum(ops.values()), "ops": ops}


def act_rows(width: int) -> list[dict]:
    """One row per (candidate kept at ``width``, forward / backward)."""
    from lowbit.kernels import _triton_producers as tp
    from lowbit.kernels._triton_quant import _fmt_constants

    rows = []
    for backward in (False, True):  # the candidates the autotuner keeps for each pass
        for cfg in tp._prune(tp.act_candidates(), {"N": width}, WANT_OUT=True, COLSUM=backward):
            k = cfg.kwargs
            fmt = _fmt_constants("e5m2" if backward else "e4m3") | {"EMULATE": False}
            ce = dict(ACT=1, BACKWARD=backward, WANT_OUT=True, COLSUM=backward, **fmt, **k)
            ce.update({name: rule({**ce, "N": width}) for name, rule in tp._PIECE_HEURISTICS.items()})  # as a launch
            s = sass_stats(tp._act_quantize_kernel, ACT_SIGNATURE, ce, cfg.num_warps, aligned=(0, 1, 2, 3, 4, 5, 7))
            # useful elements per pass of the code: a whole row block (one pass, masked lanes included in the count;
            # pieces), or one chunk (two passes: each loop body runs once per chunk and is counted once)
            chunked = not ce["ONE_PASS"] and not k["PIECES"]
            lanes = k["BLOCK_M"] * (k["BLOCK_N"] if chunked else width)
            rows.append(dict(width=width, pass_="backward" if backward else "forward", config=_describe(k, width),
                             warps=cfg.num_warps, regs=s["regs"], stack=s["stack"], instructions=s["instructions"],
                             per_element=s["instructions"] * 32 * cfg.num_warps / lanes,
                             chunked=chunked))
    return rows


def layernorm_rows(width: int) -> list[dict]:
    from lowbit.kernels import _triton_layernorm as tln
    from lowbit.kernels._triton_quant import _fmt_constants

    fmt = _fmt_constants("e4m3") | {"EMULATE": False}
    rows = []
    for cfg in tln._ln_prune(tln.ln_candidates(), {"D": width}):
        ce = dict(HAS_W=True, HAS_B=True, WANT_H=True, **fmt, **cfg.kwargs)
        ce.update({name: rule({**ce, "D": width}) for name, rule in tln._LN_HEURISTICS.items()})  # as a launch
        s = sass_stats(tln._layernorm_quantize_kernel, LN_SIGNATURE, ce, cfg.num_warps,
                       aligned=(0, 1, 2, 3, 4, 5, 6, 7, 9, 10))
        bm, pieces = ce["BLOCK_M"], (ce["P0"], ce["P1"], ce["P2"])
        shape = "+".join(str(p) for p in pieces if p) if ce["LN_PIECES"] else f"BLOCK_D={ce['BLOCK_D']}"
        rows.append(dict(width=width, pass_="forward", config=f"LayerNorm BLOCK_M={bm} {shape}", warps=cfg.num_warps,
                         regs=s["regs"], stack=s["stack"], instructions=s["instructions"],
                         per_element=s["instructions"] * 32 * cfg.num_warps / (bm * width), chunked=False))
    return rows


def _describe(k: dict, width: int) -> str:
    from lowbit.kernels import _triton_producers as tp
    from lowbit.kernels._common import row_pieces

    if k["PIECES"]:
        shape = "pieces " + "+".join(map(str, row_pieces(width)))
    elif k["BLOCK_N"] >= width:
        shape = f"one pass {k['BLOCK_N']} lanes"
    else:
        shape = f"two passes of {k['BLOCK_N']}" + (" (reload)" if k["RELOAD"] else "")
    progs = "a block each" if k["MAX_PROGRAMS"] == tp.ONE_BLOCK_EACH else f"<= {k['MAX_PROGRAMS']} programs"
    return f"BLOCK_M={k['BLOCK_M']} {shape}, {progs}"


def table(rows: list[dict]) -> str:
    out = ["| width | pass | candidate | warps | registers | stack | SASS | thread-instructions / element |",
           "|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        per = f"{r['per_element']:.1f}" + (" (both passes)" if r["chunked"] else "")
        out.append(f"| {r['width']} | {r['pass_']} | {r['config']} | {r['warps']} | {r['regs']} | {r['stack']} | "
                   f"{r['instructions']} | {per} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="*", default=[5120], help="activation rows (the MLP hidden width)")
    ap.add_argument("--layernorm", type=int, nargs="*", default=[], help="LayerNorm rows (the model width)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns unless it is set; 1 is the default
    rows = [r for w in args.widths for r in act_rows(w)] + [r for w in args.layernorm for r in layernorm_rows(w)]
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
