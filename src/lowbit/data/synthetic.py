"""Built-in synthetic image–caption data: coloured shapes with attributes, rendered procedurally.

Each scene has a background (black/gray/white with a gentle gradient and pixel noise) and one object, or with
probability ``p_multi`` two or three smaller objects in distinct corners. Every object has a *shape* (8), a
*colour* (8), a *size* (3), a *position* (3×3 grid), a *texture* (solid/striped/checkered) and small
jitters (centre, radius, rotation ±10°, colour ±14). Captions describe the scene in varied phrasings, naming
the shape and colour almost always and size, position, texture and background some of the time.

Colour, background and texture are learned first; shape, size, the 64-way colour+shape composition and
position take progressively longer, so model size and training length show. Measured with scratch tiny
CLIPs (ViT 32 px / patch 8 / width 128, batch 128, AdamW 1e-3, CPU): byte-level text tower, 3 layers, 400
steps: colour ≈ 99 %, background ≈ 100 %, texture ≈ 80 %, size ≈ 55 %, shape ≈ 20 % (chance 12.5 %);
word-level text tower, 2 layers, 1,000 / 1,500 steps: shape 59 % / 72 %, colour+shape 58 % / 71 % (chance
1.6 %), position 13 % / 25 % (chance 11 %). Shape is visually salient (a supervised shape classifier on the
same ViT reaches 77 % in 400 steps); contrastive training picks it up after colour and background.

Everything is a pure function of (seed, split, index) through counter-based hashing (``_rng``): any sample can
be produced alone, in any order, by any worker; "train" and "test" (held-out) splits use disjoint hash
streams. Rendering is vectorised over a chunk of scenes with signed-distance shapes and 1-pixel anti-aliasing
at any ``image_size`` (≥ 16).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from lowbit.data import _rng
from lowbit.data.image import CLIP_MEAN, CLIP_STD, check_image_size
from lowbit.data.stream import SampleStream

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star", "ring", "heart")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (222, 38, 38),
    "orange": (247, 138, 28),
    "yellow": (242, 222, 46),
    "green": (38, 168, 58),
    "cyan": (36, 204, 222),
    "blue": (40, 72, 224),
    "purple": (142, 58, 204),
    "pink": (247, 128, 192),
}
SIZES: dict[str, float] = {"small": 0.15, "medium": 0.21, "large": 0.29}  # radius / image side
_GRID = (0.28, 0.5, 0.72)
POSITIONS: dict[str, tuple[float, float]] = {
    name: (_GRID[col], _GRID[row])
    for row, rname in enumerate(("top", "", "bottom"))
    for col, cname in enumerate(("left", "", "right"))
    for name in [" ".join(p for p in (rname, cname) if p) or "center"]
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (18, 18, 18), "gray": (125, 125, 125), "white": (238, 238, 238)}
TEXTURES: tuple[str, ...] = ("solid", "striped", "checkered")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
    "texture": TEXTURES,
    "background": tuple(BACKGROUNDS),
}
_CORNERS = np.array([0, 2, 6, 8])  # indices of the corner cells in POSITIONS
_CENTER = 4
_TEXTURE_P = (0.6, 0.2, 0.2)
P_OMIT_COLOUR = 0.07  # captions that name the shape but not the colour

TASK_TEMPLATES: dict[str, list[str]] = {
    "shape": ["a photo of a {}.", "a {}.", "a drawing of a {}.", "an image of a {}."],
    "colour": ["a photo of a {} shape.", "a {} shape.", "an image of a {} shape."],
    "size": ["a photo of a {} shape.", "a {} shape.", "an image of a {} shape."],
    "position": ["a shape in the {}.", "a shape at the {}.", "a photo of a shape on the {}."],
    "texture": ["a photo of a {} shape.", "a {} shape.", "an image of a {} shape."],
    "background": ["a shape on a {} background.", "a photo of a shape on a {} background.", "something on {}."],
    "colour_shape": ["a photo of a {}.", "a {}.", "an image of a {}."],
}
TASKS: tuple[str, ...] = tuple(TASK_TEMPLATES)


def task_classnames(task: str) -> list[str]:
    """Class names of a synthetic zero-shot task."""
    if task == "colour_shape":
        return [f"{c} {s}" for c in COLOURS for s in SHAPES]
    if task not in ATTRIBUTES:
        raise ValueError(f"unknown synthetic task {task!r}; known: {', '.join(TASKS)}")
    return list(ATTRIBUTES[task])


@dataclass
class Scenes:
    """Attributes of a batch of ``B`` scenes with up to ``K`` objects (arrays ``[B]`` / ``[B, K]``)."""

    index: np.ndarray
    n_objects: np.ndarray
    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    position: np.ndarray
    texture: np.ndarray
    background: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    angle: np.ndarray
    rgb: np.ndarray  # [B, K, 3]
    gradient: np.ndarray  # [B, 2]
    words: np.ndarray  # [B, 40] caption choices in [0, 1)

    def rows(self, sl: slice) -> Scenes:
        """The scenes ``sl`` (a slice along the batch axis)."""
        return Scenes(**{f.name: getattr(self, f.name)[sl] for f in dataclasses.fields(self)})

    @property
    def present(self) -> np.ndarray:
        """[B, K] bool: which object slots are drawn."""
        return np.arange(self.shape.shape[1])[None, :] < self.n_objects[:, None]


def sample_scenes(
    seed: int,
    split: str,
    index: np.ndarray,
    *,
    max_objects: int = 3,
    p_multi: float = 0.2,
    p_center: float = 0.0,
    force: Mapping[str, np.ndarray] | None = None,
) -> Scenes:
    """Draw scene attributes for the given indices (deterministic per (seed, split, index)).

    ``force`` maps an attribute name to a ``[B]`` array of class ids imposed on the first object; forcing
    anything makes single-object scenes (used for zero-shot evaluation, where a label must be unambiguous).
    """
    index = np.asarray(index, dtype=np.int64)
    b, k = index.shape[0], max_objects
    sid = _rng.key(split)
    slot = np.arange(k)[None, :]
    idx2 = index[:, None]

    def u(field: str, per_object: bool = True) -> np.ndarray:
        if per_object:
            return _rng.uniform(seed, sid, idx2, slot, field)
        return _rng.uniform(seed, sid, index, field)

    def pick(n: int, field: str, per_object: bool = True) -> np.ndarray:
        return np.minimum((u(field, per_object) * n).astype(np.int64), n - 1)

    if force:
        n_obj = np.ones(b, dtype=np.int64)
    elif max_objects > 1:
        multi = u("multi", False) < p_multi
        n_obj = np.where(multi, 2 + pick(max_objects - 1, "count", False), 1)
    else:
        n_obj = np.ones(b, dtype=np.int64)
    multi = n_obj > 1

    shape = pick(len(SHAPES), "shape")
    colour = pick(len(COLOURS), "colour")
    size = np.where(multi[:, None], pick(2, "size_multi"), pick(len(SIZES), "size"))
    ut = u("texture")
    texture = (ut >= _TEXTURE_P[0]).astype(np.int64) + (ut >= _TEXTURE_P[0] + _TEXTURE_P[1])
    # Multi-object scenes: objects in distinct corners (no overlaps); single: any of the 9 cells.
    corner_order = np.argsort(_rng.uniform(seed, sid, idx2, np.arange(4)[None, :], "corners"), axis=1)
    corner_pos = _CORNERS[corner_order[:, : min(k, 4)]]
    if k > 4:
        corner_pos = np.concatenate([corner_pos, np.zeros((b, k - 4), dtype=np.int64)], axis=1)
    centred = (u("centred") < p_center) & (slot == 0)  # extra weight on the centre cell (single objects)
    single_pos = np.where(centred, _CENTER, pick(len(POSITIONS), "position"))
    position = np.where(multi[:, None], corner_pos, single_pos)
    background = pick(len(BACKGROUNDS), "background", False)

    if force:
        for name, values in force.items():
            values = np.asarray(values, dtype=np.int64)
            if name == "background":
                background = values.copy()
            elif name in ("shape", "colour", "size", "position", "texture"):
                arr = {"shape": shape, "colour": colour, "size": size, "position": position, "texture": texture}[name]
                arr[:, 0] = values
            else:
                raise ValueError(f"cannot force unknown attribute {name!r}")

    centres = np.array(list(POSITIONS.values()))
    radii = np.array(list(SIZES.values()))
    cx = centres[position, 0] + (u("jx") - 0.5) * 0.06
    cy = centres[position, 1] + (u("jy") - 0.5) * 0.06
    radius = radii[size] * (0.92 + 0.16 * u("jr"))
    angle = (u("rot") - 0.5) * (2 * math.pi / 18)  # ±10°
    palette = np.array(list(COLOURS.values()), dtype=np.float64)
    rgb = palette[colour] * (0.92 + 0.16 * u("bright"))[..., None]
    rgb = np.clip(rgb + (_rng.uniform(seed, sid, idx2[..., None], slot[..., None], np.arange(3), "tint") - 0.5) * 28, 0, 255)
    gradient = (_rng.uniform(seed, sid, index[:, None], np.arange(2)[None, :], "grad") - 0.5) * 0.4
    words = _rng.uniform(seed, sid, index[:, None], np.arange(40)[None, :], "words")
    return Scenes(index, n_obj, shape, colour, size, position, texture, background, cx, cy, radius, angle, rgb, gradient, words)


# ---- rendering ---------------------------------------------------------------------------------------------
# NumPy float32 on purpose: single-threaded and low per-op overhead, so rendering inside the training process
# never competes with torch's intra-op thread pool (torch at 2 threads on a shared 2-core CPU was 3x slower).
def _sdf(shape_id: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (approximate outside corners) in units of the object radius; < 0 inside."""
    name = SHAPES[shape_id]
    if name == "circle":
        return np.sqrt(u * u + v * v) - 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.82
    if name == "diamond":
        return (np.abs(u) + np.abs(v) - 1.12) * 0.7071
    if name == "triangle":  # equilateral, pointing up, bounding box centred
        v = v + 0.29
        return np.maximum(np.maximum(v, -0.866 * u - 0.5 * v), 0.866 * u - 0.5 * v) - 0.58
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return np.minimum(np.maximum(au - 0.95, av - 0.32), np.maximum(au - 0.32, av - 0.95))
    if name == "star":  # five points, one up
        f = (np.arctan2(u, -v) * (5 / (2 * math.pi))) % 1.0
        return (np.sqrt(u * u + v * v) - (0.45 + 0.65 * np.abs(2 * f - 1))) * 0.8
    if name == "ring":
        return np.abs(np.sqrt(u * u + v * v) - 0.76) - 0.26
    if name == "heart":  # a diamond with two round lobes
        c = 0.083
        au = np.abs(u)
        du, dv = au - 0.4, v - (c - 0.4)
        lobe = np.sqrt(du * du + dv * dv) - 0.566
        return np.minimum((au + np.abs(v - c) - 0.8) * 0.7071, lobe)
    raise AssertionError(name)  # pragma: no cover


_F32 = np.float32


_CHUNK_BYTES = 1 << 21  # render this much image at a time: temporaries stay in cache and in malloc's heap


def render(scenes: Scenes, image_size: int, *, noise: float = 0.05) -> np.ndarray:
    """Render scenes → float32 ``[B, 3, S, S]`` in 0–255 (not normalised).

    Large batches are rendered in sub-batches of about 2 MiB of pixels: fresh multi-megabyte temporaries
    would each be page-faulted in (measured 2x slower at 224 px).
    """
    s = check_image_size(image_size, 16)
    b = scenes.index.shape[0]
    step = max(1, _CHUNK_BYTES // (12 * s * s))
    if b <= step:
        return _render(scenes, s, noise)
    out = np.empty((b, 3, s, s), _F32)
    for i in range(0, b, step):
        out[i : i + step] = _render(scenes.rows(slice(i, i + step)), s, noise)
    return out


def _render(scenes: Scenes, s: int, noise: float) -> np.ndarray:
    b = scenes.index.shape[0]
    coords = (np.arange(s, dtype=_F32) + _F32(0.5)) / _F32(s)
    yy, xx = coords.reshape(1, s, 1), coords.reshape(1, 1, s)

    bg = np.array(list(BACKGROUNDS.values()), dtype=_F32)[scenes.background]  # [B, 3]
    g = scenes.gradient.astype(_F32)
    shade = 1.0 + g[:, 0].reshape(b, 1, 1) * (xx - 0.5) + g[:, 1].reshape(b, 1, 1) * (yy - 0.5)  # [B, S, S]
    img = (bg.reshape(b, 3, 1, 1) + _F32(12.0)) * shade[:, None] - _F32(12.0)

    bi, ki = np.nonzero(scenes.present)  # objects (sample, slot)
    shapes = scenes.shape[bi, ki]
    n_slots = int(ki.max()) + 1 if ki.size else 0
    # Per slot, a compact list of its objects: slot k holds the objects of the samples with > k objects.
    slot_rows = [bi[ki == k] for k in range(n_slots)]
    slot_of = np.zeros(bi.size, dtype=np.int64)  # object -> row within its slot's buffers
    for k in range(n_slots):
        slot_of[ki == k] = np.arange(slot_rows[k].size)
    alpha_layers = [np.empty((rows.size, 1, s, s), _F32) for rows in slot_rows]
    fill_layers = [np.empty((rows.size, 3, s, s), _F32) for rows in slot_rows]  # premultiplied by alpha
    for sid in np.unique(shapes):  # one vectorised pass per shape kind
        grp = np.nonzero(shapes == sid)[0]
        gb, gk, m = bi[grp], ki[grp], grp.size

        def t(a: np.ndarray, gb: np.ndarray = gb, gk: np.ndarray = gk, m: int = m) -> np.ndarray:
            return a[gb, gk].astype(_F32).reshape(m, 1, 1)

        r = t(scenes.radius)
        dx, dy = (xx - t(scenes.cx)) / r, (yy - t(scenes.cy)) / r  # [M, 1, S], [M, S, 1]
        ang = t(scenes.angle)
        ca, sa = np.cos(ang), np.sin(ang)
        u, v = ca * dx + sa * dy, ca * dy - sa * dx  # object frame, units of radius, [M, S, S]
        px = r * _F32(s)  # radius in pixels
        alpha = np.minimum(np.maximum(0.5 - _sdf(int(sid), u, v) * px, 0.0), 1.0).astype(_F32, copy=False)
        tex = scenes.texture[gb, gk]
        shade_obj = alpha
        if (tex > 0).any():  # stripes / checks at least 3 px wide, dark bands at 35 % brightness
            period = np.maximum(3.0 / px, _F32(0.42))
            fv = np.floor(v / period)
            pattern = np.where((tex == 2).reshape(m, 1, 1), fv + np.floor(u / period), fv) % 2.0
            pattern *= (tex > 0).reshape(m, 1, 1)
            shade_obj = alpha * (1.0 - 0.65 * pattern).astype(_F32)
        rgb = scenes.rgb[gb, gk].astype(_F32).reshape(m, 3, 1, 1)
        fill = rgb * shade_obj[:, None]
        for k in np.unique(gk):
            sel = np.nonzero(gk == k)[0]
            dst = slot_of[grp[sel]]
            alpha_layers[k][dst] = alpha[sel, None]
            fill_layers[k][dst] = fill[sel]
    for k in range(n_slots):  # paint slot by slot: later objects over earlier ones
        if slot_rows[k].size == b:
            img *= 1.0 - alpha_layers[k]
            img += fill_layers[k]
        else:
            rows = slot_rows[k]
            img[rows] = img[rows] * (1.0 - alpha_layers[k]) + fill_layers[k]
    if noise > 0:
        pix = _rng.hash64(_rng.key("noise"), scenes.index[:, None], np.arange(s * s)[None, :])
        amp = _F32(2 * 255 * noise / 2**24)
        img += ((pix >> np.uint64(40)).astype(_F32) * amp - _F32(255 * noise)).reshape(b, 1, s, s)
    np.maximum(img, 0.0, out=img)
    return np.minimum(img, 255.0, out=img)


_MEAN255 = np.array(CLIP_MEAN, dtype=_F32).reshape(3, 1, 1) * 255
_INV_STD255 = 1 / (np.array(CLIP_STD, dtype=_F32).reshape(3, 1, 1) * 255)


def normalize(img: np.ndarray) -> torch.Tensor:
    """Rendered 0–255 float32 → CLIP-normalised torch tensor, in place (same formula as ``image``)."""
    img -= _MEAN255
    img *= _INV_STD255
    return torch.from_numpy(img)


# ---- captions ----------------------------------------------------------------------------------------------
def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _position_phrase(name: str, w: float) -> str:
    if name == "center":
        core = "in the center" if w < 0.5 else "in the middle"
    elif name in ("top", "bottom"):
        core = f"at the {name}"
    elif name in ("left", "right"):
        core = f"on the {name}"
    else:
        core = (f"in the {name} corner", f"in the {name}", f"at the {name}")[min(int(w * 3), 2)]
    return core + (" of the image" if w * 7 % 1 < 0.3 else "")


def _noun_phrase(sc: Scenes, i: int, k: int, w: np.ndarray) -> str:
    """e.g. "small striped red circle" / "circle in red" / "red shape"; w: 8 choices in [0, 1)."""
    shape, colour = SHAPES[sc.shape[i, k]], tuple(COLOURS)[sc.colour[i, k]]
    size, texture = tuple(SIZES)[sc.size[i, k]], TEXTURES[sc.texture[i, k]]
    drop = w[0]
    if drop < 0.08:
        shape = "shape"
    elif drop < 0.08 + P_OMIT_COLOUR:
        colour = ""
    size_word = size if w[1] < 0.5 else ""
    tex_p = 0.8 if texture != "solid" else 0.12
    tex_word = texture if w[2] < tex_p else ""
    if colour and tex_word != "solid" and w[3] < 0.15:
        base = " ".join(p for p in (size_word, shape) if p) + f" in {colour}"
        if tex_word:
            base += " with stripes" if texture == "striped" else " with a checkered pattern"
        return base
    return " ".join(p for p in (size_word, tex_word, colour, shape) if p)


_FRAMES = ("{}", "a photo of {}", "an image of {}", "a picture of {}", "there is {}", "a drawing of {}", "{}", "a rendering of {}")
_BG_FORMS = ("on a {} background", "against a {} background", "on {}", "with a {} background")


def caption(sc: Scenes, i: int) -> str:
    """Caption of scene ``i`` (deterministic given the scene's word choices)."""
    w = sc.words[i]
    parts = []
    n = int(sc.n_objects[i])
    for k in range(n):
        wk = w[7 * k :]
        phrase = _article(_noun_phrase(sc, i, k, wk[:4]))
        if (n > 1 and wk[4] < 0.6) or (n == 1 and wk[4] < 0.5):
            phrase += " " + _position_phrase(tuple(POSITIONS)[sc.position[i, k]], wk[5])
        parts.append(phrase)
    if n == 1:
        body = parts[0]
    else:
        body = ", ".join(parts[:-1]) + " and " + parts[-1]
        if w[30] < 0.3:
            body = ("two" if n == 2 else "three") + " shapes: " + body
    frame = _FRAMES[min(int(w[34] * len(_FRAMES)), len(_FRAMES) - 1)]
    text = frame.format(body) if n == 1 or w[33] < 0.3 else body  # keep multi-object captions short
    if w[35] < 0.4:
        bg = tuple(BACKGROUNDS)[sc.background[i]]
        text += " " + _BG_FORMS[min(int(w[36] * 4), 3)].format(bg)
    return text + ("." if w[37] < 0.5 else "")


# ---- datasets ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of ``synthetic:key=value,...`` specs (see ``lowbit.data`` docs)."""

    seed_offset: int = 0
    max_objects: int = 3
    p_multi: float = 0.2
    p_center: float = 0.0
    noise: float = 0.05
    eval_n: int = 512
    tasks: tuple[str, ...] = TASKS

    def __post_init__(self) -> None:
        if not 1 <= self.max_objects <= 3:
            raise ValueError(f"synthetic max_objects must be 1, 2 or 3, got {self.max_objects}")
        if not 0.0 <= self.p_multi <= 1.0:
            raise ValueError(f"synthetic p_multi must be in [0, 1], got {self.p_multi}")
        if not 0.0 <= self.p_center <= 1.0:
            raise ValueError(f"synthetic p_center must be in [0, 1], got {self.p_center}")
        if not 0.0 <= self.noise <= 0.5:
            raise ValueError(f"synthetic noise must be in [0, 0.5], got {self.noise}")
        if self.eval_n < 1:
            raise ValueError(f"synthetic eval_n must be >= 1, got {self.eval_n}")
        for t in self.tasks:
            task_classnames(t)


def generate(
    seed: int, split: str, index: np.ndarray, image_size: int, config: SyntheticConfig = SyntheticConfig()
) -> tuple[torch.Tensor, list[str]]:
    """Normalised images ``[B, 3, S, S]`` and captions for the given indices (the train/held-out sampler)."""
    sc = sample_scenes(
        seed + config.seed_offset, split, index, max_objects=config.max_objects, p_multi=config.p_multi, p_center=config.p_center
    )
    images = normalize(render(sc, image_size, noise=config.noise))
    return images, [caption(sc, i) for i in range(len(sc.index))]


class SyntheticStream(SampleStream):
    """Infinite training stream: global position ``q`` is synthetic sample ``q`` of split "train"."""

    chunk = 128  # scenes rendered per vectorised call

    def __init__(self, config: SyntheticConfig, **kwargs: int) -> None:
        super().__init__(**kwargs)
        check_image_size(self.image_size, 16)
        self.config = config

    def _produce(self, positions: np.ndarray) -> Iterator[tuple[torch.Tensor, str]]:
        images, captions = generate(self.seed, "train", positions, self.image_size, self.config)
        for i in range(len(captions)):
            yield images[i], captions[i]


class SyntheticTaskDataset(Dataset):
    """Held-out zero-shot images for one attribute task; labels are balanced (``label = i mod classes``)."""

    chunk = 256

    def __init__(self, task: str, n: int, *, image_size: int, seed: int, config: SyntheticConfig) -> None:
        self.task, self.n, self.seed, self.config = task, n, seed, config
        self.image_size = check_image_size(image_size, 16)
        self.classnames = task_classnames(task)
        self.stats: dict[str, int] = {"skipped_images": 0, "skipped_captions": 0}
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.n

    def labels(self) -> np.ndarray:
        """All labels, in order."""
        return np.arange(self.n, dtype=np.int64) % len(self.classnames)

    def _chunk(self, c: int) -> torch.Tensor:
        if c not in self._cache:
            index = np.arange(c * self.chunk, min(self.n, (c + 1) * self.chunk), dtype=np.int64)
            labels = index % len(self.classnames)
            force: dict[str, np.ndarray] = {}
            if self.task == "colour_shape":
                force = {"colour": labels // len(SHAPES), "shape": labels % len(SHAPES)}
            else:
                force = {self.task: labels}
            if self.task == "texture":  # stripes need room: medium or large objects only
                force["size"] = 1 + _rng.randint(2, self.seed, "texture_size", index)
            split = f"test/{self.task}"
            sc = sample_scenes(
                self.seed + self.config.seed_offset, split, index, max_objects=1, p_center=self.config.p_center, force=force
            )
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[c] = normalize(render(sc, self.image_size, noise=self.config.noise))
        return self._cache[c]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} samples")
        i %= self.n
        return self._chunk(i // self.chunk)[i % self.chunk], i % len(self.classnames)
