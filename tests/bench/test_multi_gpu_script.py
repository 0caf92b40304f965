"""``bench/multi_gpu.py --dry`` (the GPU benchmark's CPU smoke test): its resume stage runs on gloo and
the report compares the resumed run (2 processes to step 3, then 1 to step 6) with the uninterrupted one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_dry_run_resume_stage(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench/multi_gpu.py"), "--dry", "--only", "resume",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    md = (tmp_path / "multi_gpu.md").read_text()
    assert "steps 1-3 identical; steps 4-6 max |dloss|" in md, md
    d = float(md.split("steps 4-6 max |dloss| ")[1].split()[0])
    assert d <= 1e-5  # fp32 on the CPU: only reduction orders differ between 1 and 2 processes
    jobs = {j["name"]: j for j in json.loads((tmp_path / "multi_gpu.json").read_text())["jobs"]}
    assert {n: j["rc"] for n, j in jobs.items()} == {"resume-ref-2": 0, "resume-a-2": 0, "resume-b-1": 0}
    assert jobs["resume-b-1"]["summary"]["step"] == 6 and jobs["resume-b-1"]["summary"]["world_size"] == 1
