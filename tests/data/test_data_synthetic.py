"""The built-in synthetic shapes data: determinism, captions that tell the truth, labels that are rendered."""

from __future__ import annotations

import itertools
import re
import time

import numpy as np
import pytest
import torch

from lowbit.data import CLIP_MEAN, CLIP_STD, build_train_data, build_zeroshot, describe
from lowbit.data.synthetic import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    SyntheticConfig,
    _sdf,
    caption,
    generate,
    render,
    sample_scenes,
)


def _take(ds, n):
    return list(itertools.islice(iter(ds), n))


@pytest.mark.parametrize("size", [16, 32, 48])
def test_stream_yields_normalised_images_and_captions(size: int) -> None:
    samples = _take(build_train_data("synthetic", image_size=size, seed=0), 40)
    for img, cap in samples:
        assert img.shape == (3, size, size) and img.dtype == torch.float32
        assert isinstance(cap, str) and len(cap) > 3
    x = np.stack([s[0].numpy() for s in samples])
    # De-normalised values are pixel intensities in [0, 1].
    pix = x * np.array(CLIP_STD).reshape(1, 3, 1, 1) + np.array(CLIP_MEAN).reshape(1, 3, 1, 1)
    assert pix.min() >= -1e-5 and pix.max() <= 1 + 1e-5
    assert pix.std() > 0.1  # not blank


def test_samples_depend_only_on_seed_and_index() -> None:
    cfg = SyntheticConfig()
    a_img, a_cap = generate(3, "train", np.arange(10), 32, cfg)
    b_img, b_cap = generate(3, "train", np.array([7, 2, 9]), 32, cfg)
    assert torch.equal(b_img, a_img[[7, 2, 9]]) and b_cap == [a_cap[7], a_cap[2], a_cap[9]]
    c_img, _ = generate(4, "train", np.arange(10), 32, cfg)
    assert not torch.equal(c_img, a_img)
    d_img, _ = generate(3, "test", np.arange(10), 32, cfg)  # held-out split: another hash stream
    assert all(not torch.equal(d_img[i], a_img[i]) for i in range(10))
    big, _ = generate(3, "train", np.arange(30), 96, cfg)  # rendered in sub-batches of 18
    assert torch.equal(generate(3, "train", np.arange(16, 21), 96, cfg)[0], big[16:21])
    offset = build_train_data("synthetic:seed_offset=1", image_size=32, seed=3)
    assert torch.equal(_take(offset, 1)[0][0], c_img[0])


def _words(text: str, vocabulary) -> set[str]:
    return {w for w in vocabulary if re.search(rf"\b{re.escape(w)}\b", text)}


def test_captions_only_name_attributes_that_are_in_the_image() -> None:
    sc = sample_scenes(0, "train", np.arange(400))
    n_multi = 0
    for i in range(400):
        text = caption(sc, i)
        k = int(sc.n_objects[i])
        n_multi += k > 1
        shapes = {SHAPES[s] for s in sc.shape[i, :k]}
        colours = {tuple(COLOURS)[c] for c in sc.colour[i, :k]}
        named_shapes, named_colours = _words(text, SHAPES), _words(text, COLOURS)
        assert named_shapes <= shapes, (text, shapes)
        assert named_colours <= colours, (text, colours)
        assert named_shapes or named_colours, text  # every caption names a shape or a colour
        named_bg = _words(text.split(" background")[0].split(" on ")[-1], BACKGROUNDS)
        if "background" in text:
            assert named_bg == {tuple(BACKGROUNDS)[sc.background[i]]}, text
    assert 60 < n_multi < 200  # p_multi = 0.3
    texts = {caption(sc, i) for i in range(400)}
    assert len(texts) > 350  # varied phrasing


def test_max_objects_parameter_and_bad_parameters() -> None:
    d = describe("synthetic:max_objects=1,tasks=shape+colour")
    assert d["kind"] == "synthetic" and d["params"]["max_objects"] == 1
    assert d["zeroshot_tasks"] == {"shape": 8, "colour": 8}
    sc = sample_scenes(0, "train", np.arange(200), p_center=1.0)
    single = sc.n_objects == 1
    assert (sc.position[single, 0] == list(POSITIONS).index("center")).all() and (~single).any()
    for bad in ("synthetic:bogus=1", "synthetic:p_center=2", "synthetic:max_objects=9", "synthetic:noise=x", "synthetic:tasks=shape+nope"):
        with pytest.raises(ValueError):
            describe(bad)
    with pytest.raises(ValueError, match="image_size"):
        build_train_data("synthetic", image_size=8, seed=0)


def test_shapes_are_inside_out_shapes() -> None:
    u = np.array([0.0, 0.76, 3.0], dtype=np.float32)
    v = np.zeros(3, dtype=np.float32)
    for sid, name in enumerate(SHAPES):
        d = _sdf(sid, u, v)
        if name == "ring":
            assert d[0] > 0 and d[1] < 0  # a hole in the middle
        else:
            assert d[0] < 0, name
        assert d[2] > 0, name


_MEAN = np.array(CLIP_MEAN, dtype=np.float32).reshape(3, 1, 1) * 255
_STD = np.array(CLIP_STD, dtype=np.float32).reshape(3, 1, 1) * 255


def _foreground(img: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(pixel colours 0..255 [3, S, S], mask of coloured pixels: backgrounds, gradients and noise are gray).

    NumPy on purpose: tiny torch reductions crawl on a loaded shared CPU (thread-pool hand-offs).
    """
    pix = img.numpy() * _STD + _MEAN
    return pix, (pix.max(0) - pix.min(0)) > 60


def test_zeroshot_tasks_render_their_labels() -> None:
    tasks = {t.name: (t, ds) for t, ds in build_zeroshot("synthetic:eval_n=72", image_size=32, seed=0)}
    assert set(tasks) == {"shape", "colour", "size", "position", "texture", "background", "colour_shape"}
    for task, ds in tasks.values():
        assert len(ds) == 72 and all("{}" in t for t in task.templates)
        labels = [ds[i][1] for i in range(len(ds))]
        assert labels == [i % len(task.classnames) for i in range(72)]
    assert tasks["colour_shape"][0].classnames[9] == "orange square"

    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    _, ds = tasks["colour"]
    hits = 0
    for i in range(len(ds)):  # vote over pixels close to a palette colour
        pix, _ = _foreground(ds[i][0])
        dist = np.linalg.norm(pix.reshape(3, -1).T[:, None, :] - palette[None], axis=2)
        near = dist.argmin(1)[dist.min(1) < 45]
        hits += int(np.bincount(near, minlength=len(palette)).argmax()) == ds[i][1]
    assert hits / len(ds) > 0.95

    _, ds = tasks["background"]
    bgs = np.array(list(BACKGROUNDS.values()), dtype=np.float32)
    for i in range(len(ds)):
        pix, _ = _foreground(ds[i][0])
        assert int(np.linalg.norm(bgs - pix[:, 0, 0], axis=1).argmin()) == ds[i][1]

    _, ds = tasks["position"]
    centres = np.array(list(POSITIONS.values())) * 32
    hits = 0
    for i in range(len(ds)):
        _, mask = _foreground(ds[i][0])
        ys, xs = np.nonzero(mask)
        c = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
        hits += int(np.linalg.norm(centres - c, axis=1).argmin()) == ds[i][1]
    assert hits / len(ds) > 0.9

    _, ds = tasks["size"]
    areas: dict[int, list[float]] = {k: [] for k in range(len(SIZES))}
    for i in range(len(ds)):
        areas[ds[i][1]].append(float(_foreground(ds[i][0])[1].sum()))
    means = [np.mean(areas[k]) for k in range(len(SIZES))]
    assert means[0] < means[1] < means[2]


def test_limit_caps_zeroshot_sets() -> None:
    (task, ds), *_ = build_zeroshot("synthetic:tasks=shape", image_size=16, limit=10)
    assert task.name == "shape" and len(ds) == 10
    with pytest.raises(IndexError):
        ds[10]


def test_generation_is_fast() -> None:
    """Well under 1 ms per 32x32 image (measured ~0.1–0.15 ms; generous bound for a loaded shared CPU)."""
    cfg = SyntheticConfig()
    generate(0, "train", np.arange(128), 32, cfg)
    best = float("inf")
    for rep in range(3):
        t = time.perf_counter()
        generate(0, "train", np.arange(rep * 512, (rep + 1) * 512), 32, cfg)
        best = min(best, (time.perf_counter() - t) / 512)
    assert best < 1e-3, f"{best * 1e6:.0f} us per image"


def test_render_rejects_tiny_images() -> None:
    with pytest.raises(ValueError):
        render(sample_scenes(0, "train", np.arange(2)), 8)
