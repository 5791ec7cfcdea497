"""Signed-distance drawing on a supersampled grid: an antialiased image and a label map that matches it exactly.

Shapes are float32 signed-distance fields over the grid (negative inside, in the caller's length unit). A
`Canvas` paints them in painter's order, on the whole grid or on a window of it (`Region`) that a small part
fits in; `resolve` box-filters the colours and takes the majority label of the same subsamples, so every label
boundary lies where the visible colour changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.errors import InputError

Color = tuple[int, int, int]
Region = tuple[slice, slice]  # a window of the grid: (rows, columns)
EVERYWHERE: Region = (slice(None), slice(None))


def clip_color(values: Sequence[float]) -> Color:
    """Round three channel values and clip them to 0-255."""
    r, g, b = (min(255, max(0, round(v))) for v in values)
    return (r, g, b)


def scale(color: Color, f: float) -> Color:
    """`color` times `f`: darker below 1."""
    return clip_color([c * f for c in color])


def mix(c1: Color, c2: Color, t: float) -> Color:
    """Linear blend: `c1` at t = 0, `c2` at t = 1."""
    return clip_color([x + (y - x) * t for x, y in zip(c1, c2, strict=True)])


def ellipse(x: np.ndarray, y: np.ndarray, rx: float | np.ndarray, ry: float | np.ndarray) -> np.ndarray:
    """Approximate signed distance to the axis-aligned ellipse with half-axes `rx`, `ry` centred at the origin."""
    k0 = np.sqrt((x / rx) ** 2 + (y / ry) ** 2)
    k1 = np.sqrt((x / rx**2) ** 2 + (y / ry**2) ** 2)
    # (k0 - 1) / |grad k0| with |grad k0| = k1 / k0; at the centre the ratio is 0 / 0 and 1 / max(r) stands in
    grad = np.maximum(k1 / np.maximum(k0, 1e-6), 1.0 / np.maximum(rx, ry))
    out: np.ndarray = (k0 - 1.0) / grad
    return out


def circle(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Exact signed distance to the circle of radius `r` centred at the origin."""
    out: np.ndarray = np.sqrt(x * x + y * y) - r
    return out


def triangle_wave(t: np.ndarray) -> np.ndarray:
    """0 at even integers, 1 at odd ones, linear between: sharp spikes and zigzags."""
    out: np.ndarray = 1.0 - np.abs(t % 2.0 - 1.0)
    return out


class Canvas:
    """Colour [n, n, 3] and label [n, n] grids, `ss` subsamples per output pixel and axis, painted in order.

    Every method takes `at`, the window that its [h, w] arguments cover (default: the whole grid).
    """

    def __init__(self, background: np.ndarray, *, ss: int, ink: Color, outline: float) -> None:
        """`background` float32 [n, n, 3] in 0-255; `outline` is the default ink rim width in length units."""
        if background.ndim != 3 or background.shape[0] != background.shape[1] or background.shape[0] % ss:
            raise InputError(f"background must be [n, n, 3] with n a multiple of {ss}, got {list(background.shape)}")
        self.rgb = background.astype(np.float32)
        self.labels = np.zeros(background.shape[:2], dtype=np.uint8)
        self.ss = ss
        self.ink = np.array(ink, dtype=np.float32)
        self.outline = outline

    def paint(
        self,
        d: np.ndarray,
        label: int,
        color: Color,
        *,
        shade: np.ndarray | None = None,
        outline: float | None = None,
        at: Region = EVERYWHERE,
    ) -> np.ndarray:
        """Give the region d < 0 `color` (times `shade`) and `label`, with an ink rim inside it; returns d < 0."""
        mask = d < 0
        self.fill(mask, color, shade=shade, at=at)
        width = self.outline if outline is None else outline
        if width > 0:  # the rim lies inside the shape, so it carries the shape's label
            self.rgb[at][mask & (d > -width)] = self.ink
        self.labels[at][mask] = label
        return mask

    def fill(self, mask: np.ndarray, color: Color, *, shade: np.ndarray | None = None, at: Region = EVERYWHERE) -> None:
        """Recolour `mask` and keep its labels: details inside a part (iris, teeth, highlights)."""
        fill = np.array(color, dtype=np.float32)
        self.rgb[at][mask] = fill if shade is None else fill * shade[mask][:, None]

    def tint(self, alpha: np.ndarray, color: Color, *, at: Region = EVERYWHERE) -> None:
        """Blend `color` over the grid with opacity `alpha` in [0, 1]; labels unchanged."""
        a = alpha[..., None].astype(np.float32)
        view = self.rgb[at]
        view[...] = view * (1.0 - a) + np.array(color, dtype=np.float32) * a

    def resolve(self, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """Image float32 [H, W, 3] (box filter) and labels uint8 [H, W] (majority vote, ties to the lower id)."""
        size, ss = self.rgb.shape[0] // self.ss, self.ss
        # rows first, then columns: two reductions over contiguous axes beat one strided mean over both
        image = self.rgb.reshape(size, ss, -1).sum(axis=1).reshape(size, size, ss, 3).sum(axis=2) / (ss * ss)
        pixel = (np.arange(size)[:, None, None, None] * size + np.arange(size)[None, None, :, None]) * num_classes
        index = (pixel + self.labels.reshape(size, ss, size, ss)).ravel()
        counts = np.bincount(index, minlength=size * size * num_classes).reshape(size, size, num_classes)
        labels = counts.argmax(axis=-1).astype(np.uint8)
        return image, labels
