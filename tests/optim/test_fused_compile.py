"""The fused StableAdamW kernel compiles for Hopper (sm_90) ahead of time, on any machine.

The interpreter runs the kernel's semantics on the CPU; this catches what only the GPU compiler would
reject (types, layouts), and checks that the aligned variant gets 128-bit vector loads and stores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, re
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from lowbit.optim._fused import _stable_adamw_kernel as k

    out = {}
    for pdt, mdt, aligned in (("fp32", "fp32", True), ("bf16", "fp32", True), ("fp32", "fp32", False)):
        sig = {"p_base": f"*{pdt}", "g_base": f"*{pdt}", "m_base": f"*{mdt}", "v_base": f"*{mdt}",
               "r_base": "*fp32", "offs": "*i64", "ttab": "*i64", "items": "*i64", "partials": "*fp32",
               "ws": "*i32", "n_items": "i32", "lr": "fp32", "wd": "fp32", "w1": "fp32", "b2": "fp32",
               "w2": "fp32", "eps": "fp32", "eps_sq": "fp32"}
        consts = {"BLOCK": 1024, "P1_BLOCKS": 2, "P2_BLOCKS": 4, "RBLOCK": 1024, "CLIP": True,
                  "MAXIMIZE": False, "ALIGNED": aligned}
        sig.update({c: "constexpr" for c in consts})
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(10)}  # what a launch with aligned tensors gets
        c = triton.compile(ASTSource(fn=k, signature=sig, constexprs=consts, attrs=attrs),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        ptx = c.asm["ptx"]
        out[f"{pdt}/{mdt}/{aligned}"] = {"v4_loads": len(re.findall(r"ld\\.global[\\w.:]*\\.v4", ptx)),
                                          "v4_stores": len(re.findall(r"st\\.global[\\w.:]*\\.v4", ptx))}
    print("RESULT" + json.dumps(out))
    """
)


def _ptxas_available() -> bool:
    try:
        import triton

        return os.path.exists(
            os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
        )
    except ImportError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _ptxas_available(), reason="Triton's bundled ptxas is not available")
def test_kernel_compiles_for_sm90_with_vector_accesses() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    res = json.loads(line[len("RESULT") :])
    # full blocks: phase 2 loads p, g, m, v and stores p, m, v; phase 1 loads g, v (8 fp32 per thread = 2 × v4)
    assert res["fp32/fp32/True"] == {"v4_loads": 12, "v4_stores": 6}
    assert res["bf16/fp32/True"]["v4_loads"] >= 6 and res["bf16/fp32/True"]["v4_stores"] >= 3
    assert res["fp32/fp32/False"] == {
        "v4_loads": 0,
        "v4_stores": 0,
    }  # unaligned: scalar accesses, still correct
