"""The README picture: real images through every editing mode, as one PNG.

One row per input image: the input, its inversion, the inversion's segmentation, a mask painted on that
segmentation, the optimisation edit it drives, then vector edits at several scales. Tiles are enlarged with
nearest-neighbour sampling so that 64 px pixels stay visible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from engine.bundle import Bundle
from engine.editing import apply_vectors, optimize_edit
from engine.errors import InputError
from engine.images import colorize, fit_to_canvas, image_to_uint8
from engine.inversion import invert
from engine.perceptual import PerceptualLoss

MaskOp = Callable[[Tensor], Tensor]  # labels [h, w] -> the painted labels


def _tile(array: np.ndarray, zoom: int) -> Image.Image:
    return Image.fromarray(array).resize((array.shape[1] * zoom, array.shape[0] * zoom), Image.Resampling.NEAREST)


def edit_figure(
    bundle: Bundle,
    images: Sequence[Image.Image],
    paint: MaskOp,
    paint_title: str,
    vectors: Sequence[tuple[str, float]],
    *,
    perceptual: PerceptualLoss | None = None,
    zoom: int = 2,
) -> tuple[Image.Image, list[int]]:
    """Rows of input | inversion | segmentation | painted mask | optimisation edit | vector edits.

    `paint` edits the inversion's segmentation as a user would; `vectors` are (bundle vector, scale) pairs.
    Returns the picture and the rows where `paint` changed nothing (their edit column repeats the inversion).
    """
    missing = sorted({name for name, _ in vectors} - set(bundle.vectors))
    if missing:
        raise InputError(f"{bundle.spec.name} has no vectors {missing}")
    assert bundle.spec.geometry is not None
    top, left, h, w = bundle.spec.geometry.box
    columns = ["input", "inversion", "segmentation", paint_title, "optimised edit"]
    columns += [f"{name} x{scale:g}" for name, scale in vectors]
    perceptual = perceptual if perceptual is not None else bundle.perceptual()
    rows: list[list[np.ndarray]] = []
    unpainted: list[int] = []
    for index, image in enumerate(images):
        canvas = fit_to_canvas(image, bundle.spec.geometry)
        inv = invert(bundle, canvas, perceptual=perceptual)
        labels = inv.rendering.labels[0]
        painted = paint(labels.cpu())
        if bool((painted != labels.cpu()).any()):
            edited_image = optimize_edit(bundle, inv.w_plus, painted, perceptual=perceptual).rendering.image
        else:
            unpainted.append(index)
            edited_image = inv.rendering.image
        row = [
            image_to_uint8(canvas[:, :, top : top + h, left : left + w])[0],
            image_to_uint8(inv.rendering.image)[0],
            colorize(labels, bundle.spec.classes),
            colorize(painted, bundle.spec.classes),
            image_to_uint8(edited_image)[0],
        ]
        for name, scale in vectors:
            edited = apply_vectors(bundle, inv.w_plus, [(bundle.vectors[name], scale)])
            row.append(image_to_uint8(edited.rendering.image)[0])
        rows.append(row)
    return _grid(rows, columns, zoom), unpainted


def _grid(rows: list[list[np.ndarray]], titles: list[str], zoom: int) -> Image.Image:
    h, w = rows[0][0].shape[:2]
    tw, th, gap, header = w * zoom, h * zoom, 4, 28
    out = Image.new("RGB", (len(titles) * (tw + gap) + gap, header + len(rows) * (th + gap) + gap), "white")
    draw = ImageDraw.Draw(out)
    for c, title in enumerate(titles):
        x = gap + c * (tw + gap)
        for k, part in enumerate(title.split(" ", 1)):  # two short lines fit a 128 px column
            draw.text((x + 2, 2 + 12 * k), part, fill="black")
        for r, row in enumerate(rows):
            out.paste(_tile(row[c], zoom), (x, header + gap + r * (th + gap)))
    return out
