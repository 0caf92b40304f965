"""bench/probes/sass_producers.py: the producers' launch candidates compiled for sm_90 offline (Triton's bundled
ptxas, cuobjdump, nvdisasm: no GPU), and the claim behind the row pieces — a row held exactly costs fewer
instructions per element than the same row in a masked power-of-two block."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import triton

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@pytest.mark.skipif(not (BIN / "cuobjdump").exists() or not (BIN / "nvdisasm").exists(),
                    reason="this Triton wheel ships no cuobjdump / nvdisasm")
def test_pieces_cost_fewer_instructions_per_element_than_a_masked_block() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile for real, for sm_90
    env["PYTHONPATH"] = str(ROOT / "src")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "probes" / "sass_producers.py"), "--widths", "1280",
                          "--layernorm", "1280"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.stdout.splitlines()
            if re.match(r"\|\s*1280 \|", line)]
    forward = [(r[2], float(r[7].split()[0]), int(r[5])) for r in rows if r[1] == "forward" and "BLOCK_M" in r[2]]
    pieces = [per for what, per, _ in forward if "pieces 1024+256" in what]
    masked = [per for what, per, _ in forward if "one pass 2048 lanes" in what]
    assert pieces and masked, out.stdout
    assert min(pieces) < 0.8 * min(masked), out.stdout  # 37.5% of a 2048-lane block is masked at 1280
    assert all(stack == 0 for _, _, stack in forward), out.stdout  # no spills in any forward candidate
    assert any("LayerNorm" in r[2] for r in rows)
