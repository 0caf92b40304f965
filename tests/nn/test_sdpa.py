"""lowbit.nn.sdpa: the backend preference (parsing, set / restore, what reaches sdpa_kernel), the same attention as
F.scaled_dot_product_attention, no graph break under torch.compile, and on CUDA the preferred backend chosen."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend
from torch.profiler import ProfilerActivity, profile

from lowbit.models import CLIP, get_config
from lowbit.nn import sdpa


@pytest.fixture(autouse=True)
def _restore():
    previous = sdpa.set_sdpa_backends(None)
    yield
    sdpa.set_sdpa_backends(previous)


@pytest.mark.parametrize("bad", ["fast", "flash,flash", "flash,,bogus", ["cudnn", "FLASH"]])
def test_bad_preference_names_the_problem(bad):
    with pytest.raises(ValueError, match="SDPA backends must be distinct names from flash, cudnn, efficient, math"):
        sdpa.set_sdpa_backends(bad)
    assert sdpa.sdpa_backends() is None  # unchanged


def test_set_and_mode_restore():
    assert sdpa.set_sdpa_backends("flash, cudnn") is None
    assert sdpa.sdpa_backends() == ("flash", "cudnn")
    with sdpa.sdpa_backends_mode(["efficient"]):
        assert sdpa.sdpa_backends() == ("efficient",)
        with sdpa.sdpa_backends_mode("auto"):
            assert sdpa.sdpa_backends() is None
    assert sdpa.sdpa_backends() == ("flash", "cudnn")


def test_preference_first_then_every_other_backend(monkeypatch):
    seen = []
    real = sdpa.sdpa_kernel

    def spy(backends, set_priority=False):
        seen.append((list(backends), set_priority))
        return real(backends, set_priority=set_priority)

    monkeypatch.setattr(sdpa, "sdpa_kernel", spy)
    q = torch.randn(2, 3, 5, 8)
    sdpa.attention(q, q, q)
    assert seen == []  # no preference: PyTorch's own choice, no context at all
    with sdpa.sdpa_backends_mode("efficient,flash"):
        sdpa.attention(q, q, q)
    B = SDPBackend
    assert seen == [([B.EFFICIENT_ATTENTION, B.FLASH_ATTENTION, B.CUDNN_ATTENTION, B.MATH], True)]


@pytest.mark.parametrize("order", [None, "math", "flash,cudnn"])
def test_same_result_as_sdpa(order):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 16, generator=g) for _ in range(3))
    mask = torch.randn(2, 3, 7, 7, generator=g)
    with sdpa.sdpa_backends_mode(order):
        for kw in ({}, {"is_causal": True}, {"attn_mask": mask}):
            got = sdpa.attention(q, k, v, **kw)
            want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                  **{n: t.double() if torch.is_tensor(t) else t for n, t in kw.items()})
            # float32 softmax(QKᵀ)V with K = 16: a few ulp of the outputs' scale
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_compiles_without_graph_break():
    model = CLIP(get_config("tiny")).eval()
    block = model.visual.blocks[0]
    x = torch.randn(2, model.visual.positional_embedding.shape[0], block.ln1.normalized_shape[0])
    with sdpa.sdpa_backends_mode("flash,efficient"):
        explained = torch._dynamo.explain(block)(x)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_bad_environment_variable_fails_at_import():
    env = {**os.environ, "LOWBIT_SDPA": "fastest"}
    out = subprocess.run([sys.executable, "-c", "import lowbit.nn.sdpa"], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "LOWBIT_SDPA: SDPA backends must be distinct names" in out.stderr


# the CUDA kernels each backend launches (FA2's flash_fwd_kernel, cuDNN's cudnn_generated_..._flash_fprop, the
# memory-efficient backend's fmha_cutlassF); cuDNN's names contain "flash" too, hence the exclusion
KERNEL = {"flash": (r"flash_fwd", r"cudnn"), "cudnn": (r"cudnn", None), "efficient": (r"fmha|efficient", r"cudnn")}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA: which backend's kernels run")
@pytest.mark.parametrize("name", ["flash", "efficient", "cudnn"])
def test_cuda_preferred_backend_runs(name):
    """The preferred backend's kernels run (``torch._fused_sdp_choice`` does not follow the priority order: on an H100
    it named cuDNN under a flash-first preference while the flash kernels ran)."""
    q = torch.randn(4, 16, 257, 80, device="cuda", dtype=torch.bfloat16)
    with sdpa.sdpa_backends_mode(name):
        sdpa.attention(q, q, q)  # warm-up (cuDNN builds its graph)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            sdpa.attention(q, q, q)
            torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    want, avoid = KERNEL[name]
    ran = [n for n in names if re.search(want, n, re.IGNORECASE) and not (avoid and re.search(avoid, n))]
    if name == "cudnn" and not ran:
        pytest.skip(f"this build's cuDNN attention does not take the shape (kernels: {names})")
    assert ran, f"no {name} kernel among {names}"


def test_fa4_and_flash_are_one_backend():
    with pytest.raises(ValueError, match="fa4 and flash are one backend"):
        sdpa.set_sdpa_backends("flash,fa4")


def test_fa4_without_its_package_is_one_clear_error():
    import importlib.util

    import torch.nn.attention as attention

    if not hasattr(attention, "activate_flash_attention_impl"):
        pytest.skip("this torch has no flash attention registry")
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(RuntimeError, match=r"set_sdpa_backends: fa4 needs the flash-attn-4 package"):
        sdpa.set_sdpa_backends("fa4")
    assert sdpa.sdpa_backends() is None  # unchanged


def test_fa4_activates_pytorchs_fa4_impl_once_then_prefers_flash(monkeypatch):
    import torch.nn.attention as attention

    active: list[str] = []
    monkeypatch.setattr(attention, "activate_flash_attention_impl", lambda impl: active.append(impl), raising=False)
    monkeypatch.setattr(attention, "current_flash_attention_impl", lambda: active[-1] if active else None,
                        raising=False)
    seen = []
    real = sdpa.sdpa_kernel
    monkeypatch.setattr(sdpa, "sdpa_kernel", lambda b, set_priority=False: seen.append(list(b)) or real(b, set_priority))
    with sdpa.sdpa_backends_mode("fa4,cudnn"), sdpa.sdpa_backends_mode("fa4"):
        q = torch.randn(1, 2, 3, 8)
        sdpa.attention(q, q, q)
    assert active == ["FA4"]  # activated once, then found active
    B = SDPBackend
    assert seen == [[B.FLASH_ATTENTION, B.CUDNN_ATTENTION, B.EFFICIENT_ATTENTION, B.MATH]]
