"""Safe decoding of uploads: size limits while reading, formats allowed, pixel limit before decode.

Images: PNG, JPEG or WebP only (Pillow is told so, it never guesses among its other decoders).
Masks: PNG only, either class ids (8/16-bit grey or palette indices) or a colourised mask in the model's
palette; unknown colours are an error, never background. Brushed regions (roi): PNG only, painted pixels
non-zero or opaque.
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
import torch
from fastapi import UploadFile
from PIL import Image

from engine import Bundle, InputError
from engine.images import fit_to_canvas, image_to_uint8, labels_from_array, labels_from_colors, open_image

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
CHUNK = 1 << 16


class PayloadTooLargeError(Exception):
    def __init__(self, what: str, limit: int, unit: str = "bytes") -> None:
        super().__init__(f"{what} is larger than the limit of {limit} {unit}")


class UnsupportedMediaError(InputError):
    code = "unsupported_media_type"


def read_limited(upload: UploadFile, limit: int, what: str) -> bytes:
    """Read an upload, refusing it as soon as it passes `limit` bytes."""
    parts: list[bytes] = []
    size = 0
    while chunk := upload.file.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(what, limit)
        parts.append(chunk)
    if size == 0:
        raise InputError(f"{what} is empty")
    return b"".join(parts)


def check_npy_header(data: bytes, what: str) -> None:
    """Refuse a `.npy` whose header claims more data than the file holds, before numpy reads it: np.load
    allocates the claimed shape first, so a 100-byte file could ask for terabytes (a MemoryError, a 500)."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
    except ValueError:
        return  # not a .npy: the engine's reader refuses it with its own message
    try:
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, SyntaxError, TypeError) as exc:
        raise InputError(f"{what}: unreadable .npy header ({exc})") from exc
    if dtype.hasobject:
        return  # pickled objects, not a fixed size: refused by the engine's reader (allow_pickle=False)
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > len(data) - buf.tell():
        raise InputError(f"{what}: the .npy header claims {claimed} bytes of data, the file holds fewer")


def _open(data: bytes, formats: tuple[str, ...], max_pixels: int, what: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as exc:  # Pillow's own hard limit, raised on the header
        raise PayloadTooLargeError(f"{what} ({exc})", max_pixels, "pixels") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        reason = re.sub(r"\s*<[^<>]* at 0x[0-9a-f]+>", "", str(exc))  # Pillow names its in-memory file object
        raise UnsupportedMediaError(f"{what} is not a readable {'/'.join(formats)} file ({reason})") from exc
    if img.width * img.height > max_pixels:  # header only so far: nothing decoded yet
        raise PayloadTooLargeError(f"{what} ({img.width}x{img.height})", max_pixels, "pixels")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnsupportedMediaError(f"{what} is truncated or corrupt ({exc})") from exc
    return img


def decode_canvas(data: bytes, bundle: Bundle, fit: str, max_pixels: int) -> np.ndarray:
    """An uploaded photo -> the model's canvas as uint8 [S, S, 3] (what the worker inverts)."""
    img = open_image(_open(data, IMAGE_FORMATS, max_pixels, "image"))
    assert bundle.spec.geometry is not None
    canvas = fit_to_canvas(img, bundle.spec.geometry, fit)  # type: ignore[arg-type]
    array: np.ndarray = image_to_uint8(canvas)[0]
    return array


def decode_mask(data: bytes, bundle: Bundle) -> np.ndarray:
    """An edited mask PNG -> class ids uint8 [h, w] over the content box."""
    img = _open(data, ("PNG",), 4 * bundle.spec.resolution**2, "mask")
    assert bundle.spec.geometry is not None
    _, _, h, w = bundle.spec.geometry.box
    shape = (h, w)
    if img.mode in ("L", "I", "I;16"):
        labels = labels_from_array(np.asarray(img).astype(np.int64), len(bundle.spec.classes), shape)
    elif img.mode == "P":  # indexed colour: the palette's colours if they are the model's, else the indices
        if _mostly_model_colours(img, bundle):
            labels = _from_colours(img, bundle, shape)  # an entry outside the model's palette is an error, as in RGB
        else:  # a palette of its own (e.g. PASCAL VOC's): the indices are the class ids
            labels = labels_from_array(np.asarray(img).astype(np.int64), len(bundle.spec.classes), shape)
    elif img.mode in ("RGB", "RGBA"):
        labels = _from_colours(img, bundle, shape)
    else:
        raise UnsupportedMediaError(f"mask PNG mode {img.mode} is neither class ids nor RGB colours")
    return labels.numpy().astype(np.uint8)


def decode_painted(data: bytes, bundle: Bundle) -> np.ndarray:
    """A brushed-region PNG -> uint8 [h, w] over the content box, 255 where painted, 0 elsewhere.

    Painted means: alpha above 0 where the image has transparency (a brush layer over nothing), else any
    non-zero sample (white or coloured strokes on black)."""
    img = _open(data, ("PNG",), 4 * bundle.spec.resolution**2, "roi")
    assert bundle.spec.geometry is not None
    shape = tuple(bundle.spec.geometry.box[2:])
    if img.size[::-1] != shape:
        raise InputError(f"roi is {img.size[::-1]} (h, w), this model edits {shape}")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        samples = np.asarray(img.convert("RGBA"))[..., 3:]  # the alpha channel
    elif img.mode in ("1", "L", "I", "I;16"):
        samples = np.asarray(img)[..., None]
    else:
        samples = np.asarray(img.convert("RGB"))
    painted: np.ndarray = (samples != 0).any(axis=2)
    if not painted.any():
        raise InputError("roi paints no pixel: mark the brushed pixels non-zero (or opaque)")
    return painted.astype(np.uint8) * 255


def _mostly_model_colours(img: Image.Image, bundle: Bundle) -> bool:
    """Whether at least half of the palette entries a P-mode mask uses are colours of the model's classes:
    then it was painted in the model's colours (the indices are only the file's order), and one entry
    outside the palette is a mistake to report, not a reason to read the indices as class ids."""
    used = np.unique(np.asarray(img))
    palette = np.asarray(img.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    model = {c.rgb for c in bundle.spec.classes}
    colours = [tuple(int(v) for v in palette[i]) if i < len(palette) else None for i in used.tolist()]
    return 2 * sum(c in model for c in colours) >= len(colours)


def _from_colours(img: Image.Image, bundle: Bundle, shape: tuple[int, int]) -> torch.Tensor:
    rgb = np.asarray(img.convert("RGB"))
    if rgb.shape[:2] != shape:
        raise InputError(f"mask is {rgb.shape[:2]} (h, w), this model edits {shape}")
    return labels_from_colors(rgb, bundle.spec.classes)
