"""``lowbit data prepare``: real image–caption data that installs offline, written as WebDataset shards.

Sources (installed files, no downloads):

* ``fashion-mnist``: Debian package ``dataset-fashion-mnist`` (IDX files in /usr/share/datasets/fashion-mnist).
  70,000 grayscale 28×28 clothing images; captions from the class name in one of several templates; zero-shot
  task "fashion-mnist" on the 10,000 test images.
* ``emoji``: npm package ``emoji-datasource-google`` (emoji.json + img/google/64/*.png). Each emoji (and each
  skin-tone variant) with a caption from its real name ("face with tears of joy"), sometimes mentioning its
  category; zero-shot task "emoji-category" (9 categories) on held-out emoji (20 % of base emoji, chosen by
  a hash of the code point, variants follow their base emoji; the test split holds base emoji only).

Output directory (read by ``build_train_data(DIR)`` / ``build_zeroshot(DIR)`` with no special case)::

    DIR/train-000000.tar ...   WebDataset shards: <key>.png (native size) + <key>.txt (caption) + <key>.cls
    DIR/test-000000.tar ...
    DIR/zeroshot.json          {"tasks": [{"name", "classnames", "templates", "split": "test", "label": "cls"}]}
    DIR/manifest.json          format, name, source (paths + sha256), splits (count, shards),
                               files (count, bytes, sha256 per shard), zeroshot

Shards are byte-reproducible (fixed tar headers, deterministic PNG encoding), so checksums are stable.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lowbit.data import _rng
from lowbit.data.spec import FORMAT, MANIFEST
from lowbit.data.tars import sha256_file, write_shard

DATASETS = ("fashion-mnist", "emoji")

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "/usr/local/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
]  # fmt: skip
FASHION_MNIST_CAPTIONS = [
    "a photo of {a}.",
    "a black and white photo of {a}.",
    "a grayscale image of {a}.",
    "a small photo of the {}.",
    "{a} on a black background.",
    "a product photo of {a}.",
    "a low resolution photo of the {}.",
    "an image of {a}.",
    "{a}.",
    "a centered photo of the {}.",
]
FASHION_MNIST_TEMPLATES = [
    "a photo of the {}.",
    "a black and white photo of the {}.",
    "a low resolution photo of the {}.",
    "a grayscale image of the {}.",
]

EMOJI_PACKAGE = "emoji-datasource-google"
EMOJI_EXCLUDED_CATEGORIES = ("Component",)
SKIN_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}
EMOJI_TEMPLATES = ["a {} emoji.", "an emoji from the {} group.", "an emoji of {}."]
EMOJI_TEST_FRACTION = 0.2


def _article(name: str) -> str:
    return ("an " if name[:1] in "aeiou" else "a ") + name


def _fill(template: str, name: str) -> str:
    return template.replace("{a}", _article(name)).replace("{}", name)


# ---- locating sources ------------------------------------------------------------------------------------
def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_fashion_mnist(source: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the four Fashion-MNIST IDX files (``--source`` first, then the Debian location)."""
    candidates = [Path(source)] if source is not None else [Path(p) for p in FASHION_MNIST_DIRS]
    for folder in candidates:
        if all(_idx_file(folder, stem) for pair in FASHION_MNIST_FILES.values() for stem in pair):
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files ({{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]) not found in {looked}. "
        "Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass --source DIR."
    )


def _emoji_candidates() -> list[Path]:
    roots = [Path.cwd() / "node_modules", Path.home() / "node_modules"]
    roots += [Path(p) for p in os.environ.get("NODE_PATH", "").split(os.pathsep) if p]
    prefix = os.environ.get("npm_config_prefix") or os.environ.get("NPM_CONFIG_PREFIX")  # noqa: SIM112 (npm sets lower case)
    if prefix:
        roots.append(Path(prefix) / "lib" / "node_modules")
    roots += [Path(p) for p in ("/usr/local/lib/node_modules", "/usr/lib/node_modules", "/usr/share/nodejs",
                                "/opt/homebrew/lib/node_modules")]  # fmt: skip
    roots.append(Path.home() / ".npm-global" / "lib" / "node_modules")
    return [r / EMOJI_PACKAGE for r in roots]


def find_emoji(source: str | os.PathLike[str] | None = None) -> Path:
    """The ``emoji-datasource-google`` package folder (emoji.json + img/google/64)."""
    if source is not None:
        base = Path(source)
        candidates = [base, base / EMOJI_PACKAGE, base / "node_modules" / EMOJI_PACKAGE]
    else:
        candidates = _emoji_candidates()
    for folder in candidates:
        if (folder / "emoji.json").is_file() and (folder / "img" / "google" / "64").is_dir():
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"npm package {EMOJI_PACKAGE} (emoji.json + img/google/64/) not found in {looked}. "
        f"Install it with `npm install {EMOJI_PACKAGE}` (in this folder, or -g), or pass --source DIR."
    )


# ---- Fashion-MNIST ---------------------------------------------------------------------------------------
def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) of unsigned bytes → uint8 array of its shape."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: broken gzip data ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: IDX element type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    ndim = raw[3]
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    size = int(np.prod(shape))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != size:
        raise ValueError(f"{path}: IDX body has {data.size} bytes, header says {shape} ({size})")
    return data.reshape(shape)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _fashion_split(folder: Path, split: str, limit: int | None) -> Iterator[tuple[str, dict[str, bytes]]]:
    images_file, labels_file = (_idx_file(folder, stem) for stem in FASHION_MNIST_FILES[split])
    images, labels = read_idx(images_file), read_idx(labels_file)  # type: ignore[arg-type]
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"Fashion-MNIST {split}: images {images.shape} and labels {labels.shape} do not match")
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"Fashion-MNIST {split}: label {labels.max()} out of range")
    n = images.shape[0] if limit is None else min(limit, images.shape[0])
    choice = _rng.randint(len(FASHION_MNIST_CAPTIONS), "fashion-mnist", split, np.arange(n))
    for i in range(n):
        name = FASHION_MNIST_CLASSES[labels[i]]
        caption = _fill(FASHION_MNIST_CAPTIONS[choice[i]], name)
        yield f"{i:06d}", {"png": _png(images[i]), "txt": caption.encode(), "cls": str(int(labels[i])).encode()}


def _fashion_source(folder: Path) -> dict[str, Any]:
    files = {}
    for pair in FASHION_MNIST_FILES.values():
        for stem in pair:
            f = _idx_file(folder, stem)
            assert f is not None
            files[f.name] = sha256_file(f)
    return {"dataset": "fashion-mnist", "package": "dataset-fashion-mnist (Debian)", "path": str(folder), "sha256": files}


# ---- emoji -----------------------------------------------------------------------------------------------
def _category_name(category: str) -> str:
    return category.lower().replace("&", "and")


def _emoji_name(entry: dict[str, Any]) -> str:
    name = entry.get("name") or (entry.get("short_name") or "").replace("_", " ")
    return " ".join(str(name).lower().split())


def _tone_phrase(code: str) -> str:
    tones = [SKIN_TONES.get(c.upper(), c.lower()) for c in code.split("-")]
    if len(set(tones)) == 1:
        return f"{tones[0]} skin tone"
    return " and ".join(tones) + " skin tones"


def _emoji_caption(name: str, category: str, short_name: str, u: float) -> str:
    forms = (
        "{n}",
        "{n}",
        "an emoji of {n}",
        "{n} emoji",
        "{n}, an emoji from the {c} group",
        "a {c} emoji: {n}",
        "{s} ({c})",
    )
    form = forms[min(int(u * len(forms)), len(forms) - 1)]
    return form.format(n=name, c=category, s=short_name.replace("_", " ").replace("-", " "))


def emoji_records(folder: Path) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
    """(category class names, {"train": [...], "test": [...]}) with image path, caption and label per record."""
    with open(folder / "emoji.json", encoding="utf-8") as f:
        entries = json.load(f)
    if not isinstance(entries, list):
        raise ValueError(f"{folder / 'emoji.json'}: expected a JSON list of emoji")
    img_dir = folder / "img" / "google" / "64"
    categories: list[str] = []
    for e in sorted(entries, key=lambda e: e.get("sort_order", 0)):
        cat = e.get("category")
        if cat and cat not in EMOJI_EXCLUDED_CATEGORIES and cat not in categories:
            categories.append(cat)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for e in sorted(entries, key=lambda e: (e.get("sort_order", 0), e.get("unified", ""))):
        cat = e.get("category")
        if cat not in categories or not e.get("image") or not e.get("unified"):
            continue
        name, label = _emoji_name(e), categories.index(cat)
        cname = _category_name(cat)
        if not name:
            continue
        test = float(_rng.uniform("emoji-split", e["unified"].upper())) < EMOJI_TEST_FRACTION
        split = "test" if test else "train"
        variants = [(e["unified"], e["image"], name, e.get("has_img_google", True))]
        if not test:  # skin-tone variants: training only, next to their base emoji
            for code, var in sorted((e.get("skin_variations") or {}).items()):
                if var.get("image"):
                    variants.append((var.get("unified", code), var["image"], f"{name}, {_tone_phrase(code)}",
                                     var.get("has_img_google", True)))  # fmt: skip
        for unified, image, text, has_img in variants:
            path = img_dir / image
            if not has_img or not path.is_file():
                continue
            u = float(_rng.uniform("emoji-caption", unified.upper()))
            caption = _emoji_caption(text, cname, str(e.get("short_name") or name), u)
            splits[split].append({"key": unified.lower(), "path": path, "caption": caption, "label": label})
    return [_category_name(c) for c in categories], splits


def _emoji_samples(records: list[dict[str, Any]], limit: int | None) -> Iterator[tuple[str, dict[str, bytes]]]:
    for r in records[:limit]:
        yield r["key"], {"png": r["path"].read_bytes(), "txt": r["caption"].encode(), "cls": str(r["label"]).encode()}


# ---- writing -----------------------------------------------------------------------------------------------
def _chunks(items: Iterable[tuple[str, dict[str, bytes]]], size: int) -> Iterator[list[tuple[str, dict[str, bytes]]]]:
    chunk: list[tuple[str, dict[str, bytes]]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_split(out: Path, split: str, samples: Iterable[tuple[str, dict[str, bytes]]], shard_size: int) -> list[dict[str, Any]]:
    """Write ``split-000000.tar``, ... of at most ``shard_size`` samples; returns the shard records."""
    return [write_shard(out / f"{split}-{i:06d}.tar", chunk) for i, chunk in enumerate(_chunks(samples, shard_size))]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def prepare(
    dataset: str,
    out: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    shard_size: int = 10000,
    limit: int | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Prepare ``dataset`` ("fashion-mnist" or "emoji") into ``out``; returns the manifest.

    ``limit``: at most that many samples per split (quick trials). ``force``: overwrite an existing manifest.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    out = Path(out)
    if (out / MANIFEST).exists() and not force:
        raise FileExistsError(f"{out / MANIFEST} exists; pass --force to overwrite")
    if dataset == "fashion-mnist":
        folder = find_fashion_mnist(source)
        src_info = _fashion_source(folder)
        classnames, templates, task = FASHION_MNIST_CLASSES, FASHION_MNIST_TEMPLATES, "fashion-mnist"
        samples = {s: _fashion_split(folder, s, limit) for s in ("train", "test")}
        captions = "class name in one of several templates (" + str(len(FASHION_MNIST_CAPTIONS)) + ")"
    else:
        folder = find_emoji(source)
        classnames, records = emoji_records(folder)
        version = None
        if (folder / "package.json").is_file():
            version = json.loads((folder / "package.json").read_text(encoding="utf-8")).get("version")
        src_info = {"dataset": "emoji", "package": f"{EMOJI_PACKAGE} (npm)", "version": version,
                    "path": str(folder), "sha256": {"emoji.json": sha256_file(folder / "emoji.json")}}  # fmt: skip
        templates, task = EMOJI_TEMPLATES, "emoji-category"
        samples = {s: _emoji_samples(records[s], limit) for s in ("train", "test")}
        captions = "emoji name (with skin tone), sometimes with its category"
    say(f"source: {folder}")
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):  # shards of an earlier run (--force); only our own naming pattern
        for stale in out.glob(f"{split}-" + "[0-9]" * 6 + ".tar"):
            stale.unlink()
    splits: dict[str, Any] = {}
    files: dict[str, Any] = {}
    for split, items in samples.items():
        t = time.perf_counter()
        shards = write_split(out, split, items, shard_size)
        count = sum(int(s["count"]) for s in shards)
        if count == 0:
            raise ValueError(f"{dataset}: the {split} split is empty (source {folder})")
        splits[split] = {"count": count, "shards": [s["name"] for s in shards]}
        for s in shards:
            files[str(s["name"])] = {k: s[k] for k in ("count", "bytes", "sha256")}
        say(f"{split}: {count} samples in {len(shards)} shard(s), {time.perf_counter() - t:.1f} s")
    tasks = {"tasks": [{"name": task, "classnames": list(classnames), "templates": list(templates),
                        "split": "test", "label": "cls"}]}  # fmt: skip
    _write_json(out / "zeroshot.json", tasks)
    from lowbit._version import __version__

    manifest = {
        "format": FORMAT,
        "name": dataset,
        "created_by": f"lowbit {__version__}",
        "source": src_info,
        "captions": captions,
        "splits": splits,
        "files": files,
        "zeroshot": {"file": "zeroshot.json", "sha256": sha256_file(out / "zeroshot.json"), "tasks": [task]},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    _write_json(out / MANIFEST, manifest)
    say(f"wrote {out / MANIFEST} in {manifest['seconds']} s")
    return manifest


def verify(root: str | os.PathLike[str]) -> list[str]:
    """Check a prepared directory against its manifest: returns a list of problems (empty when all good)."""
    root = Path(root)
    from lowbit.data.spec import read_manifest

    try:
        manifest = read_manifest(str(root))
    except (OSError, ValueError) as exc:
        return [str(exc)]
    problems = []
    for name, info in manifest.get("files", {}).items():
        path = root / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != info.get("sha256"):
            problems.append(f"{name}: sha256 mismatch")
    zs = manifest.get("zeroshot") or {}
    if zs.get("file") and zs.get("sha256"):
        path = root / zs["file"]
        if not path.is_file() or sha256_file(path) != zs["sha256"]:
            problems.append(f"{zs['file']}: missing or sha256 mismatch")
    return problems
