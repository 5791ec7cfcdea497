"""Renderings -> stored PNGs (or inline data URLs): the images part of every result."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
import torch

from engine import Bundle, Rendering
from engine.images import colorize, image_to_uint8, uncertainty_to_uint8
from schemas.edits import ImageLinks, Output
from workers.png import png_bytes
from workers.store import Store, image_url


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
        if rendering.uncertainty is None:
            raise ValueError("uncertainty asked for a rendering made without it (render(..., uncertainty=True))")
        arrays["uncertainty"] = uncertainty_to_uint8(rendering.uncertainty[index])
    return arrays


def publish(
    store: Store, model: str, w_plus: np.ndarray, arrays: dict[str, np.ndarray], *, inline: bool = False
) -> tuple[str, ImageLinks]:
    """Store a result: its latent W+ [L, S] and each array as a PNG (URLs), in one Redis round trip, or the
    PNGs embedded as data URLs with `inline`. -> (latent id, image links)."""
    pngs = {name: png_bytes(array) for name, array in arrays.items()}
    latent_id, ids = store.put_result(model, w_plus, [] if inline else list(pngs.values()))
    return latent_id, _links(pngs, ids, inline)


async def apublish(
    store: Store,
    model: str,
    w_plus: np.ndarray,
    arrays: dict[str, np.ndarray],
    *,
    inline: bool = False,
    ttl: int | None = None,
) -> tuple[str, ImageLinks]:
    """`publish` on the store's asyncio client (the gateway's real-time route, on the event loop), kept for
    `ttl` seconds (None: the store's)."""
    pngs = {name: png_bytes(array) for name, array in arrays.items()}
    latent_id, ids = await store.aput_result(model, w_plus, [] if inline else list(pngs.values()), ttl)
    return latent_id, _links(pngs, ids, inline)


def _links(pngs: dict[str, bytes], ids: list[str], inline: bool) -> ImageLinks:
    if inline:
        return ImageLinks(**{k: "data:image/png;base64," + base64.b64encode(v).decode() for k, v in pngs.items()})
    return ImageLinks(**{name: image_url(i) for name, i in zip(pngs, ids, strict=True)})
