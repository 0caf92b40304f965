"""Quantizers: float64 error bounds, Triton (interpreter on CPU) == PyTorch reference, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit.kernels import (
    dequantize_fp8,
    dequantize_int8,
    quantize,
    quantize_fp8,
    quantize_fp8_transpose,
    quantize_int8,
    quantize_int8_transpose,
)
from lowbit.kernels._common import FP8_MANTISSA_BITS, FP8_MAX, FP8_MIN_NORMAL_EXP

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FP8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _groups_absmax64(x64: torch.Tensor, granularity: str) -> torch.Tensor:
    a = x64.abs()
    if granularity == "tensor":
        return a.amax() if a.numel() else a.new_zeros(())
    if granularity == "row":
        return a.amax(-1, keepdim=True)
    return a.amax(dim=tuple(range(x64.ndim - 1)), keepdim=True)


def _sample(shape, dtype, spread: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x = x * torch.exp(torch.randn(shape, generator=g, dtype=torch.float64) * spread)
    big = torch.finfo(dtype).max / 4  # keep every sample finite in its dtype
    return x.clamp(-big, big).to(dtype)


shapes = st.tuples(st.integers(1, 9), st.integers(1, 40))


@given(shape=shapes, dtype=st.sampled_from(DTYPES), gran=st.sampled_from(["row", "column", "tensor"]),
       spread=st.floats(0.0, 4.0), seed=st.integers(0, 2**16))
def test_int8_error_is_at_most_half_a_step(shape, dtype, gran, spread, seed) -> None:
    """Every element's dequantized error ≤ half a quantization step (absmax/127) of its group, in float64."""
    x = _sample(shape, dtype, spread, seed)
    q, scale = quantize_int8(x, gran, backend="torch")
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert int(q.abs().max()) <= 127
    x64 = x.double()
    amax = _groups_absmax64(x64, gran)
    assert torch.equal(scale.double(), amax)  # the stored scale is the exact absmax
    step = amax / 127
    err = (q.double() * amax / 127 - x64).abs()
    assert bool((err <= step / 2 * (1 + 1e-6) + 1e-300).all()), float((err / step).max())
    # round half to even of the float32 product, exactly
    y = (x.float() * (torch.full_like(scale, 127.0) / scale)).double()
    assert torch.equal(q.double(), torch.round(y.clamp(-127, 127)))


def _fp8_half_spacing(y64: torch.Tensor, fmt: str) -> torch.Tensor:
    """Half the distance between neighbouring fp8 values around |y| (subnormal spacing below the normals)."""
    e = torch.floor(torch.log2(y64.abs().clamp_min(1e-300))).clamp_min(FP8_MIN_NORMAL_EXP[fmt])
    return 0.5 * torch.pow(2.0, e - FP8_MANTISSA_BITS[fmt])


@given(shape=shapes, dtype=st.sampled_from(DTYPES), gran=st.sampled_from(["row", "column", "tensor"]),
       fmt=st.sampled_from(["e4m3", "e5m2"]), spread=st.floats(0.0, 6.0), seed=st.integers(0, 2**16))
def test_fp8_error_is_at_most_half_a_step(shape, dtype, gran, fmt, spread, seed) -> None:
    x = _sample(shape, dtype, spread, seed)
    q, scale = quantize_fp8(x, FP8[fmt], gran, backend="torch")
    assert q.dtype == FP8[fmt]
    x64 = x.double()
    amax = _groups_absmax64(x64, gran)
    expected_scale = torch.where(amax > 0, FP8_MAX[fmt] / amax.clamp_min(FP8_MAX[fmt] / 2.0**127), 2.0**127)
    assert torch.allclose(scale.double(), expected_scale, rtol=2**-23, atol=0)
    y = x64 * scale.double()
    assert bool((y.abs() <= FP8_MAX[fmt] * (1 + 2**-20)).all())
    err = (q.double() - y).abs()
    assert bool((err <= _fp8_half_spacing(y, fmt) * (1 + 1e-9)).all())


TRITON_CASES = [
    (fmt, gran, transpose)
    for fmt in ("int8", "e4m3", "e5m2")
    for gran in ("row", "column", "tensor")
    for transpose in (False, True)
    if not (transpose and gran == "row")
]


def _same_codes(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype == torch.int8:
        return torch.equal(a, b)
    nan_a, nan_b = torch.isnan(a.float()), torch.isnan(b.float())  # NaN's sign bit is platform-dependent
    return torch.equal(nan_a, nan_b) and torch.equal(a.view(torch.uint8)[~nan_a], b.view(torch.uint8)[~nan_b])


def _same_scale(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(torch.nan_to_num(a, nan=-1.0), torch.nan_to_num(b, nan=-1.0))


@pytest.mark.parametrize(("fmt", "gran", "transpose"), TRITON_CASES)
@given(shape=st.tuples(st.integers(1, 21), st.integers(1, 150)), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16), strided=st.booleans(), specials=st.booleans())
def test_triton_matches_reference_exactly(fmt, gran, transpose, shape, dtype, seed, strided, specials) -> None:
    """Same codes (bit for bit; NaN compared as NaN) and the same float32 scales from both paths."""
    x = _sample(shape, torch.float32, 3.0, seed)
    if specials and x.numel() > 4:
        x.view(-1)[0] = 0.0
        x[0].zero_()  # an all-zero row
        x.view(-1)[-1] = float("nan")
        x.view(-1)[x.numel() // 2] = float("inf")
        x.view(-1)[1] = -0.0
    x = x.to(dtype).to(DEVICE)
    if strided:  # a non-contiguous view with the same values
        x = x.t().contiguous().t()
    qr, sr = quantize(x.cpu(), fmt, gran, transpose=transpose, backend="torch")
    qt, st_ = quantize(x, fmt, gran, transpose=transpose, backend="triton")
    assert qt.shape == qr.shape and qt.is_contiguous()
    assert _same_codes(qr, qt.cpu()), (qr, qt)
    assert _same_scale(sr, st_.cpu())


@pytest.mark.parametrize("fmt", ["int8", "e4m3", "e5m2"])
def test_triton_row_kernel_two_pass_path(fmt, monkeypatch) -> None:
    """Rows longer than one block take the absmax-then-quantize loop; it must agree too."""
    from lowbit.kernels import _triton_quant as triton_quant

    monkeypatch.setattr(triton_quant, "_row_blocks", lambda K: (2, 16, False, 4))
    x = _sample((5, 70), torch.float32, 2.0, 3).to(DEVICE)
    x[2, 40] = float("nan")
    qr, sr = quantize(x.cpu(), fmt, "row", backend="torch")
    qt, st_ = quantize(x, fmt, "row", backend="triton")
    assert _same_codes(qr, qt.cpu()) and _same_scale(sr, st_.cpu())


def test_transpose_equals_quantize_then_transpose() -> None:
    x = _sample((13, 29), torch.bfloat16, 1.0, 7)
    q, s = quantize_int8(x, "column", backend="torch")
    qt, st_ = quantize_int8_transpose(x, "column", backend="torch")
    assert torch.equal(qt, q.t()) and torch.equal(st_, s.reshape(-1, 1))
    assert torch.equal(dequantize_int8(qt, st_, "row"), dequantize_int8(q, s, "column").t())
    q8, s8 = quantize_fp8_transpose(x, torch.float8_e5m2, "tensor", backend="torch")
    assert torch.equal(q8.view(torch.uint8), quantize_fp8(x, torch.float8_e5m2, "tensor")[0].t().view(torch.uint8))
    assert torch.equal(s8, quantize_fp8(x, torch.float8_e5m2, "tensor")[1])


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("fmt", ["int8", "e4m3", "e5m2"])
@pytest.mark.parametrize("gran", ["row", "column", "tensor"])
def test_dequantize_paths_agree_and_zero_groups(backend, fmt, gran) -> None:
    x = _sample((6, 33), torch.float32, 1.0, 11).to(DEVICE)
    x[:, 3] = 0.0
    x[2] = 0.0
    q, s = quantize(x, fmt, gran, backend=backend)
    assert bool(torch.isfinite(s).all())
    deq = dequantize_int8 if fmt == "int8" else dequantize_fp8
    for dtype in DTYPES:
        a = deq(q, s, gran, dtype, backend=backend)
        b = deq(q.cpu(), s.cpu(), gran, dtype, backend="torch")
        assert a.dtype == dtype and torch.equal(a.cpu(), b)
    out = deq(q, s, gran, torch.float32, backend=backend)
    assert bool((out[2] == 0).all()) and bool((out[:, 3] == 0).all())


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("fmt", ["int8", "e4m3", "e5m2"])
def test_all_zero_tensor_gives_zeros_and_finite_scale(backend, fmt) -> None:
    for gran in ("row", "column", "tensor"):
        x = torch.zeros(4, 8, device=DEVICE)
        q, s = quantize(x, fmt, gran, backend=backend)
        assert bool((q.float() == 0).all()) and bool(torch.isfinite(s).all())
        deq = dequantize_int8 if fmt == "int8" else dequantize_fp8
        assert bool((deq(q, s, gran) == 0).all())


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("fmt", ["int8", "e4m3", "e5m2"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_fast_mode_propagates_nonfinite(backend, fmt, bad) -> None:
    """A NaN/Inf makes its whole row non-finite after dequantization; other rows are untouched."""
    x = _sample((3, 10), torch.float32, 1.0, 5).to(DEVICE)
    x[1, 4] = bad
    q, s = quantize(x, fmt, "row", backend=backend)
    deq = dequantize_int8 if fmt == "int8" else dequantize_fp8
    out = deq(q, s, "row")
    assert not bool(torch.isfinite(out[1]).any())
    assert bool(torch.isfinite(out[[0, 2]]).all())
    qt, st_ = quantize(x, fmt, "tensor", backend=backend)
    assert not bool(torch.isfinite(deq(qt, st_, "tensor")).any())


@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
def test_checked_mode_raises(fmt, monkeypatch) -> None:
    x = torch.ones(2, 3)
    x[0, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite.*1 NaN"):
        quantize(x, fmt, "row", check=True)
    monkeypatch.setenv("LOWBIT_CHECK_FINITE", "1")
    with pytest.raises(ValueError, match="non-finite"):
        quantize(x, fmt, "tensor")
    assert quantize(torch.ones(2, 3), fmt, "tensor")[0].shape == (2, 3)  # finite input passes the check
    monkeypatch.setenv("LOWBIT_CHECK_FINITE", "0")
    quantize(x, fmt, "row")  # fast mode: no error


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_shapes_empty_1d_nd(backend) -> None:
    for shape in [(0, 5), (4, 0), (0,), (7,), (2, 3, 5)]:
        x = torch.randn(shape, device=DEVICE)
        for gran in ("row", "tensor") + (("column",) if len(shape) > 1 else ()):
            q, s = quantize_int8(x, gran, backend=backend)
            assert q.shape == x.shape
            expected = {"row": (*shape[:-1], 1), "tensor": (), "column": (1,) * (len(shape) - 1) + shape[-1:]}
            assert tuple(s.shape) == expected[gran]
            if x.numel():
                ref_q, ref_s = quantize_int8(x.cpu(), gran, backend="torch")
                assert torch.equal(q.cpu(), ref_q) and torch.equal(s.cpu(), ref_s)
            assert dequantize_int8(q, s, gran).shape == x.shape


def test_bad_input_errors() -> None:
    with pytest.raises(TypeError, match="float32, float16 or bfloat16.*int64"):
        quantize_int8(torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="float64"):
        quantize_int8(torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="granularity must be one of"):
        quantize_int8(torch.ones(3, 3), "block")
    with pytest.raises(ValueError, match="column-wise scaling needs .* 2 dims"):
        quantize_int8(torch.ones(3), "column")
    with pytest.raises(ValueError, match="0-dim"):
        quantize_int8(torch.tensor(1.0))
    with pytest.raises(ValueError, match="fused transpose takes a 2-D"):
        quantize_int8_transpose(torch.ones(2, 3, 4))
    with pytest.raises(TypeError, match="fp8 dtype must be"):
        quantize_fp8(torch.ones(3), torch.float16)
    with pytest.raises(TypeError, match="expected codes of dtype torch.int8"):
        dequantize_int8(torch.ones(3, 3), torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"row-wise scale .* must have shape \(3, 1\)"):
        dequantize_int8(torch.ones(3, 3, dtype=torch.int8), torch.ones(3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        quantize_int8([1.0, 2.0])  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        import os

        if os.environ.get("TRITON_INTERPRET") != "1":
            with pytest.raises(RuntimeError, match="Triton backend needs a CUDA tensor"):
                quantize_int8(torch.ones(2, 2), backend="triton")


def test_fp8_saturates_and_handles_tiny_and_huge() -> None:
    for fmt, dtype in FP8.items():
        x = torch.tensor([[1e-30, -2e-30, 0.0, 3e-30], [1e30, -1e30, 5.0, 0.0]])
        q, s = quantize_fp8(x, dtype, "row")
        assert bool(torch.isfinite(s).all())
        back = dequantize_fp8(q, s, "row", torch.float32).double()
        rel = ((back - x.double()).abs() / x.double().abs().clamp_min(1e-300))
        assert float(rel[:, [0, 1, 3]].max()) < 2.0 ** -FP8_MANTISSA_BITS[fmt]
        assert float(q.float().abs().max()) == FP8_MAX[fmt]  # absmax maps onto fmax
        # a value the scale pushes past fmax saturates instead of becoming inf/NaN
        big = torch.tensor([1.0e6])
        qs = (big * s[1]).clamp(-FP8_MAX[fmt], FP8_MAX[fmt]).to(dtype)
        assert math.isfinite(float(qs.float()))


@pytest.mark.parametrize("fmt", ["int8", "e4m3", "e5m2"])
def test_wide_rows_use_the_default_blocks_and_match(fmt) -> None:
    """Rows wider than one block (5000 > 2048 on the GPU) with odd row counts: same codes and scales."""
    x = _sample((7, 5000), torch.bfloat16, 2.0, 9)
    x[3, 4999] = float("nan")
    qr, sr = quantize(x, fmt, "row", backend="torch")
    qt, st_ = quantize(x.to(DEVICE), fmt, "row", backend="triton")
    assert _same_codes(qr, qt.cpu()) and _same_scale(sr, st_.cpu())


@pytest.mark.parametrize("fmt", ["int8", "e4m3", "e5m2"])
@given(shape=st.tuples(st.integers(1, 40), st.integers(1, 70)), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16), strided=st.booleans(), specials=st.booleans())
def test_quantize_dual_equals_both_layouts(fmt, shape, dtype, seed, strided, specials) -> None:
    """One pass, two layouts: bit-identical to quantize(tensor) and its transposed twin, on both backends."""
    from lowbit.kernels import quantize_dual

    x = _sample(shape, torch.float32, 3.0, seed)
    if specials and x.numel() > 2:
        x.view(-1)[0] = float("nan")
        x.view(-1)[-1] = -float("inf")
    x = x.to(dtype).to(DEVICE)
    if strided:
        x = x.t().contiguous().t()
    q_ref, s_ref = quantize(x.cpu(), fmt, "tensor", backend="torch")
    for backend in ("torch", "triton"):
        q, qt, s = quantize_dual(x, fmt, backend=backend)
        assert q.shape == x.shape and qt.shape == x.shape[::-1] and qt.is_contiguous()
        assert _same_codes(q_ref, q.cpu()) and _same_codes(q_ref.t().contiguous(), qt.cpu()), backend
        assert _same_scale(s_ref, s.cpu()), backend


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# (1000, 272) spans 16 × 3 programs on the GPU; in the CPU interpreter (16 × 16 tiles) it takes over a minute
# per case, so CI keeps the three smaller shapes (which already span several programs there).
@pytest.mark.parametrize("shape", [(200, 96), (200, 80), (130, 300)] + ([(1000, 272)] if DEVICE == "cuda" else []))
@pytest.mark.parametrize("fmt", ["int8", "e4m3", "e5m2"])
def test_transposed_layouts_on_multi_program_grids(fmt, shape, dtype) -> None:
    """Shapes spanning several programs in both grid dimensions, for every kernel path writing xᵀ: the dual
    quantizer and the column-/tensor-wise transpose (on an H100 a first version of the fp8 dual kernel wrote
    wrong transposed codes at (200, 96) and (200, 80) from float32 input while small shapes were right)."""
    from lowbit.kernels import quantize_dual

    x = _sample(shape, torch.float32, 2.0, 17).to(dtype)
    q_ref, s_ref = quantize(x, fmt, "tensor", backend="torch")
    q, qt, s = quantize_dual(x.to(DEVICE), fmt, backend="triton")
    assert _same_codes(q_ref, q.cpu()) and _same_codes(q_ref.t().contiguous(), qt.cpu()) and _same_scale(s_ref, s.cpu())
    for gran in ("tensor", "column"):
        qt_ref, st_ref = quantize(x, fmt, gran, transpose=True, backend="torch")
        qt, st_ = quantize(x.to(DEVICE), fmt, gran, transpose=True, backend="triton")
        assert _same_codes(qt_ref, qt.cpu()) and _same_scale(st_ref, st_.cpu()), gran


def test_quantize_dual_errors() -> None:
    from lowbit.kernels import quantize_dual

    with pytest.raises(ValueError, match="2-D"):
        quantize_dual(torch.ones(2, 3, 4), "e4m3")
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        quantize_dual(torch.ones(2, 3, dtype=torch.int32), "e4m3")
    with pytest.raises(ValueError, match="non-finite"):
        quantize_dual(torch.tensor([[1.0, float("nan")]]), "e4m3", check=True)
    q, qt, s = quantize_dual(torch.empty(0, 5), "e5m2")
    assert q.shape == (0, 5) and qt.shape == (5, 0) and bool(torch.isfinite(s))
