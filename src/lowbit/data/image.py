"""Image decoding and CLIP preprocessing with Pillow (torchvision is not needed).

Pipeline for stored images: decode → RGB (transparent pixels composited over white) → resize so the
shorter side equals ``image_size`` (bicubic; small images are upsampled here, never stored enlarged) →
centre crop to a square → float32 ``[3, S, S]`` normalised with the OpenAI CLIP mean/std.

Greyscale images are resized before they become RGB (a third of the work; the same pixels, Pillow resamples
each band alike). ``uint8=True`` stops before the normalisation: ``[3, S, S]`` uint8, a quarter of the bytes
between DataLoader processes and to the GPU; :func:`normalize_uint8` (on any device) then gives exactly the
float32 values of the default path (the same two float32 operations).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from PIL import Image

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")

# Images with more pixels to decode are refused before decoding: 2^25 = 33.5 MP covers 24-33 MP camera photos, and
# one decoded at that size is 100 MB of RGB. PIL's own check only warns from 89.5 MP and refuses from 179 MP, after
# which a just-below-the-limit image is decoded in full (measured: 8.6x the time, +0.5 GB per worker).
MAX_IMAGE_PIXELS = 1 << 25


class ImageTooLarge(ValueError):
    """An image with more pixels to decode than the caller's limit (``max_pixels``)."""

_MEAN255 = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1) * 255.0
_INV_STD255 = 1.0 / (torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1) * 255.0)


def check_image_size(image_size: int, minimum: int = 1) -> int:
    """Validate ``image_size`` (a positive int, at least ``minimum``)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise TypeError(f"image_size must be an int, got {type(image_size).__name__}")
    if image_size < minimum:
        raise ValueError(f"image_size must be >= {minimum}, got {image_size}")
    return image_size


def normalize_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` (0–255, on any device) → float32 normalised with CLIP_MEAN/CLIP_STD: bit for bit
    what ``decode_image`` returns without ``uint8``."""
    mean, inv_std = _constants(images.device)
    return (images.to(torch.float32) - mean) * inv_std


_ON_DEVICE: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean/std constants on ``device``, copied there once: a copy from pageable host memory per training step
    would synchronise the stream each time."""
    if device not in _ON_DEVICE:
        _ON_DEVICE[device] = (_MEAN255.to(device), _INV_STD255.to(device))
    return _ON_DEVICE[device]


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Inverse of the normalisation: float ``[..., 3, H, W]`` → values in [0, 1] (for viewing)."""
    return (images * (_INV_STD255.reciprocal() / 255.0) + _MEAN255 / 255.0).clamp(0.0, 1.0)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB; transparency is composited over white (emoji, logos)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, image_size: int) -> Image.Image:
    """Resize the shorter side to ``image_size`` (bicubic) and crop the centre square."""
    w, h = img.size
    if (w, h) != (image_size, image_size):
        scale = image_size / min(w, h)
        nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        if (nw, nh) != (image_size, image_size):
            img = img.crop((left, top, left + image_size, top + image_size))
    return img


_MEAN255_NP = np.asarray(CLIP_MEAN, dtype=np.float32) * 255.0
_INV_STD255_NP = 1.0 / (np.asarray(CLIP_STD, dtype=np.float32) * 255.0)


def pil_to_tensor(img: Image.Image, image_size: int, *, uint8: bool = False) -> torch.Tensor:
    """A Pillow image → normalised float32 ``[3, image_size, image_size]`` (NumPy math: low overhead), or with
    ``uint8`` the unnormalised ``[3, S, S]`` uint8 pixels."""
    if img.mode == "L":  # resize one band, then replicate it: the same pixels as resizing the RGB image
        img = resize_center_crop(img, image_size).convert("RGB")
    else:
        img = resize_center_crop(to_rgb(img), image_size)
    if uint8:
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).reshape(image_size, image_size, 3).transpose(2, 0, 1).copy())
    arr = np.asarray(img, dtype=np.float32).reshape(image_size, image_size, 3)
    arr = (arr - _MEAN255_NP) * _INV_STD255_NP
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def decode_image(data: bytes | str | os.PathLike[str], image_size: int, *, uint8: bool = False,
                 max_pixels: int | None = None) -> torch.Tensor:
    """Decode image bytes (or a file path) → normalised float32 ``[3, S, S]`` (``uint8``: the uint8 pixels, see
    :func:`normalize_uint8`).

    ``max_pixels``: an image with more pixels to decode (read from the header; JPEGs count at the reduced scale
    they are decoded at) raises ``ImageTooLarge`` before any pixel is decoded; PIL's own
    ``DecompressionBombWarning`` is then silenced. Raises on anything undecodable (truncated, not an image,
    decompression bomb); callers count and skip.
    """
    source = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
    with warnings.catch_warnings():
        if max_pixels is not None:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
                Image.MAX_IMAGE_PIXELS = max_pixels  # the caller's limit rules (PIL refuses from twice its own)
        try:
            img = Image.open(source)
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"{exc} (--max-image-pixels {max_pixels:,})" if max_pixels else str(exc)) from None
        with img:
            if img.format == "JPEG":
                img.draft("RGB", (image_size, image_size))  # decode big JPEGs at reduced scale: much faster
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageTooLarge(f"image is {w}x{h} ({w * h / 1e6:.1f} MP), above --max-image-pixels {max_pixels:,}")
            img.load()
            return pil_to_tensor(img, image_size, uint8=uint8)
