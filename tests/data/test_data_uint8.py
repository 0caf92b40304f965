"""uint8 transport of stored images: the loader ships pixels, the consumer normalises, and the values are exactly
those of the float32 path (every source, every image mode, odd sizes); the greyscale fast path resizes one band."""

from __future__ import annotations

import io
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lowbit.data import build_train_data, decode_image, normalize_uint8
from lowbit.data.image import resize_center_crop, to_rgb
from lowbit.data.tars import write_shard


def _image(mode: str, size: tuple[int, int], fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    bands = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2}[mode]
    arr = (rng.random((size[1], size[0], bands)) * 255).astype(np.uint8)
    img = Image.fromarray(arr[..., 0] if bands == 1 else arr, mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


CASES = [("L", (28, 28), "PNG"), ("RGB", (31, 17), "PNG"), ("RGBA", (20, 45), "PNG"), ("LA", (9, 7), "PNG"),
         ("RGB", (300, 200), "JPEG"), ("L", (64, 40), "JPEG")]


@pytest.mark.parametrize("size", [16, 24, 224])
def test_decode_uint8_then_normalize_is_the_float_path_bit_for_bit(size: int) -> None:
    for i, (mode, wh, fmt) in enumerate(CASES):
        data = _image(mode, wh, fmt, i)
        f32, u8 = decode_image(data, size), decode_image(data, size, uint8=True)
        assert u8.dtype == torch.uint8 and u8.shape == (3, size, size) and u8.is_contiguous()
        assert torch.equal(normalize_uint8(u8), f32), (mode, wh, fmt)


def test_greyscale_fast_path_equals_resizing_rgb() -> None:
    """Resizing the L band then replicating it gives the pixels of converting first (what the code did before)."""
    for wh in [(28, 28), (30, 17), (7, 9), (64, 300)]:
        img = Image.open(io.BytesIO(_image("L", wh, "PNG", wh[0])))
        img.load()
        for size in (16, 32, 224):
            before = np.asarray(resize_center_crop(to_rgb(img), size))
            got = decode_image(_image("L", wh, "PNG", wh[0]), size, uint8=True)
            assert np.array_equal(got.permute(1, 2, 0).numpy(), before), (wh, size)


def test_streams_ship_uint8_and_match_the_float_stream(tmp_path: Path) -> None:
    samples = [(f"{i:04d}", {("jpg" if fmt == "JPEG" else "png"): _image(mode, wh, fmt, i), "txt": f"c{i}".encode()})
               for i, (mode, wh, fmt) in enumerate(CASES * 2)]
    write_shard(tmp_path / "s-000.tar", samples)
    (tmp_path / "img").mkdir()
    rows = ["filepath,caption"]
    for i, (mode, wh, fmt) in enumerate(CASES):
        (tmp_path / "img" / f"{i}.{fmt.lower()}").write_bytes(_image(mode, wh, fmt, i))
        rows.append(f"img/{i}.{fmt.lower()},c{i}")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    for spec in (str(tmp_path / "s-000.tar"), str(tmp_path / "t.csv")):
        kw = dict(image_size=24, seed=3, start=5, rank=1, world_size=2)
        f32 = list(islice(iter(build_train_data(spec, **kw)), 9))
        u8 = list(islice(iter(build_train_data(spec, uint8=True, **kw)), 9))
        assert [c for _, c in u8] == [c for _, c in f32]  # same order, same samples
        for (a, _), (b, _) in zip(f32, u8):
            assert b.dtype == torch.uint8 and torch.equal(normalize_uint8(b), a), spec


def test_synthetic_stream_stays_float32_with_uint8() -> None:
    """Rendered pixels are not integers: the synthetic source keeps float32 (the trainer checks the dtype)."""
    a = next(iter(build_train_data("synthetic", image_size=16, seed=0)))[0]
    b = next(iter(build_train_data("synthetic", image_size=16, seed=0, uint8=True)))[0]
    assert b.dtype == torch.float32 and torch.equal(a, b)


def test_trainer_normalises_uint8_batches_on_the_device() -> None:
    from lowbit.train.batches import _to_device

    u8 = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = _to_device(u8, torch.device("cpu"))
    assert out.dtype == torch.float32 and torch.equal(out, normalize_uint8(u8))
    f = torch.randn(2, 3, 8, 8)
    assert _to_device(f, torch.device("cpu")) is f  # float batches (synthetic) pass through


def test_uint8_batches_through_dataloader_workers_match_the_float_path(tmp_path: Path) -> None:
    """The trainer's loader (2 worker processes, uint8 transport) gives, once normalised, the float32 batches of the
    in-process float path: same samples, same order, same values."""
    from lowbit.models import get_tokenizer
    from lowbit.train.batches import _batches, _loader_batches

    samples = [(f"{i:04d}", {"png": _image(mode, wh, fmt, i), "txt": f"c{i}".encode()})
               for i, (mode, wh, fmt) in enumerate(CASES * 3) if fmt == "PNG"]
    write_shard(tmp_path / "s-000.tar", samples)
    spec, tok = str(tmp_path / "s-000.tar"), get_tokenizer()
    ref = _batches(build_train_data(spec, image_size=16, seed=1, batch_size=4), 4, tok)
    got = _loader_batches(build_train_data(spec, image_size=16, seed=1, batch_size=4, uint8=True), 4, tok, 2, pin=False)
    for _ in range(3):
        (a, ta), (b, tb) = next(ref), next(got)
        assert b.dtype == torch.uint8 and torch.equal(normalize_uint8(b), a) and torch.equal(ta, tb)
