"""Conversions at the engine's edges: float tensors in [-1, 1] <-> uint8 pixels, label palettes."""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

from engine.bundle import ClassInfo, Geometry
from engine.errors import InputError


def image_to_uint8(image: Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]: floor(x * 127.5 + 128) clipped, the official rounding."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise InputError(f"image must be [N, 3, H, W], got {list(image.shape)}")
    x = (image.detach().float().cpu() * 127.5 + 128.0).floor().clamp(0, 255)
    return x.permute(0, 2, 3, 1).to(torch.uint8).numpy()


def palette_array(classes: Sequence[ClassInfo]) -> np.ndarray:
    """[K, 3] uint8 colours indexed by class id."""
    return np.array([c.rgb for c in classes], dtype=np.uint8)


def colorize(labels: Tensor | np.ndarray, classes: Sequence[ClassInfo]) -> np.ndarray:
    """Label map [..., H, W] -> RGB [..., H, W, 3] in the model's palette."""
    array = labels.cpu().numpy() if isinstance(labels, Tensor) else labels
    if array.size and (array.min() < 0 or array.max() >= len(classes)):
        raise InputError(f"labels must lie in [0, {len(classes)})")
    out: np.ndarray = np.take(palette_array(classes), array, axis=0)  # half the time of fancy indexing
    return out


def uncertainty_to_uint8(uncertainty: Tensor, *, max_value: float | None = None) -> np.ndarray:
    """Disagreement map [..., H, W] -> uint8 grey levels: 0 = agreement, 255 = `max_value` (default: max)."""
    u = uncertainty.detach().float().cpu().clamp(min=0)
    top = max_value if max_value is not None else max(float(u.max()), 1e-6)
    out: np.ndarray = (u / top * 255).round().clamp(0, 255).numpy().astype(np.uint8)
    return out


def save_png(array: np.ndarray, path: Path) -> None:
    """uint8 [H, W] (grey or labels) or [H, W, 3] (RGB) -> PNG file."""
    Image.fromarray(array).save(path, format="PNG")


# ---------------------------------------------------------------------------------------------- input policy

Fit = Literal["crop", "pad", "stretch"]
MAX_INPUT_PIXELS = 64_000_000  # refuse decompression bombs before decoding


def open_image(source: bytes | Path | Image.Image) -> Image.Image:
    """Decode to RGB: EXIF orientation applied, transparency composited on black (the canvas colour)."""
    if isinstance(source, Image.Image):
        img = source
    else:
        try:
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            if img.width * img.height > MAX_INPUT_PIXELS:
                raise InputError(f"image is {img.width}x{img.height}, more than {MAX_INPUT_PIXELS} pixels")
            img.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"cannot decode image: {exc}") from exc
    # A malformed EXIF block: the pixels are still a photo, only their orientation tag is unreadable.
    with contextlib.suppress(OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error):
        img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit grey (PNG): Pillow's conversion to RGB clips each sample at 255; keep the top 8 bits instead
        wide = np.asarray(img, dtype=np.int64)
        img = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(canvas, rgba)
    return img.convert("RGB")


def fit_to_canvas(image: Image.Image, geometry: Geometry, fit: Fit = "crop") -> Tensor:
    """Place an RGB image in the model's content box on a black canvas: [1, 3, S, S] in [-1, 1].

    fit: "crop" centre-crops to the box's aspect ratio, then resizes (nothing distorted, borders lost);
    "pad" letterboxes inside the box (nothing lost); "stretch" resizes to the box ignoring the aspect
    ratio, as the official tool does with car photos (512x384).
    """
    top, left, height, width = geometry.box
    if fit == "stretch":
        content = image.resize((width, height), Image.Resampling.LANCZOS)
    elif fit == "crop":
        content = ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
    elif fit == "pad":
        content = ImageOps.pad(image, (width, height), Image.Resampling.LANCZOS, color=(0, 0, 0))
    else:
        raise InputError(f"fit must be crop, pad or stretch, got {fit!r}")
    canvas = Image.new("RGB", (geometry.canvas, geometry.canvas), (0, 0, 0))
    canvas.paste(content, (left, top))
    array = torch.from_numpy(np.asarray(canvas, dtype=np.uint8).copy())
    return (array.permute(2, 0, 1).float() / 127.5 - 1.0).unsqueeze(0)


# ---------------------------------------------------------------------------------------------- masks


def labels_from_array(array: np.ndarray | Tensor, num_classes: int, shape: tuple[int, int]) -> Tensor:
    """Validate a class-id map: integer [h, w] of the expected shape, every id in [0, num_classes)."""
    t = torch.as_tensor(array)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise InputError(f"mask must hold integer class ids, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise InputError(f"mask is {tuple(t.shape)} (h, w), this model edits {shape}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise InputError(f"mask holds class ids outside [0, {num_classes}): {sorted(set(t.unique().tolist()))[:8]}")
    return t.long()


def labels_from_colors(rgb: np.ndarray, classes: Sequence[ClassInfo]) -> Tensor:
    """A colourised mask [h, w, 3] in the model's palette -> class ids. Unknown colours are an error,
    never silently background (the official tool's behaviour)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"colour mask must be uint8 [h, w, 3], got {rgb.dtype} {rgb.shape}")
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    palette = {(r << 16) | (g << 8) | b: c.id for c in classes for r, g, b in [c.rgb]}
    uniques, inverse = np.unique(codes, return_inverse=True)
    unknown = [int(u) for u in uniques if int(u) not in palette]
    if unknown:
        shown = ", ".join(f"#{u:06x}" for u in unknown[:5])
        raise InputError(f"mask uses {len(unknown)} colour(s) outside the model's palette: {shown}")
    lookup = np.array([palette[int(u)] for u in uniques], dtype=np.int64)
    return torch.from_numpy(lookup[inverse].reshape(codes.shape))


def dilate(mask: Tensor, radius: int) -> Tensor:
    """Grow a boolean [H, W] mask by `radius` pixels (Chebyshev): `radius` 3x3 dilations, as cv2."""
    if radius <= 0:
        return mask.clone()
    grown = F.max_pool2d(mask[None, None].float(), kernel_size=2 * radius + 1, stride=1, padding=radius)
    return grown[0, 0] > 0
