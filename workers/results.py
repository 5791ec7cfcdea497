"""Renderings -> stored PNGs (or inline data URLs): the images part of every result."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from engine import Bundle, Rendering
from engine.images import colorize, image_to_uint8, uncertainty_to_uint8
from schemas.edits import ImageLinks, Output
from workers.store import Store, image_url


def png_bytes(array: np.ndarray) -> bytes:
    """uint8 [H, W] (grey) or [H, W, 3] (RGB) -> PNG; fast compression, the images are small or transient."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def rendering_arrays(
    bundle: Bundle, rendering: Rendering, index: int, outputs: Sequence[Output]
) -> dict[str, np.ndarray]:
    """The requested outputs of latent `index` as uint8 arrays (labels as grey values = class ids)."""
    arrays: dict[str, np.ndarray] = {}
    if Output.image in outputs:
        arrays["image"] = image_to_uint8(rendering.image[index : index + 1])[0]
    if Output.segmentation in outputs:
        arrays["segmentation"] = rendering.labels[index].to("cpu", dtype=torch.uint8).numpy()
    if Output.segmentation_color in outputs:
        arrays["segmentation_color"] = colorize(rendering.labels[index], bundle.spec.classes)
    if Output.uncertainty in outputs:
        arrays["uncertainty"] = uncertainty_to_uint8(rendering.uncertainty[index])
    return arrays


def publish(
    store: Store,
    arrays: dict[str, np.ndarray],
    *,
    inline: bool = False,
) -> ImageLinks:
    """Store each array as a PNG (URL) or embed it (data URL)."""
    links: dict[str, str] = {}
    for name, array in arrays.items():
        png = png_bytes(array)
        if inline:
            links[name] = "data:image/png;base64," + base64.b64encode(png).decode()
        else:
            links[name] = image_url(store.put_png(png))
    return ImageLinks(**links)
