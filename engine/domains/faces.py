"""Procedural cartoon faces with exact per-pixel labels: the offline training domain of the shipped model.

A face is a `FaceAttributes` record (every random choice is a field) that `render` draws as signed-distance shapes
on a grid `SS` times finer than the output. The image is the box-filtered grid; the label map is the majority class
of the same subsamples, so label boundaries sit exactly where the visible colour changes. Later shapes cover
earlier ones (painter's order) and an outline belongs to the shape it outlines.
Lengths are in design units: `UNIT` across the canvas whatever the output size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.domains.face_attributes import FaceAttributes, sample_attributes
from engine.domains.shapes import Canvas, Region, circle, ellipse, mix, scale, triangle_wave
from engine.errors import InputError

__all__ = [
    "CLASSES",
    "EVAL_SEED_OFFSET",
    "REGIONS",
    "TRAIN_SEEDS",
    "FaceAttributes",
    "FaceSample",
    "batch",
    "eval_seeds",
    "mirror",
    "render",
    "sample",
    "sample_attributes",
]

CLASSES: list[tuple[str, str]] = [
    ("background", "#000000"),
    ("skin", "#ffcc99"),
    ("hair", "#8c564b"),
    ("left_eye", "#1f77b4"),  # the eye on the image's left
    ("right_eye", "#17becf"),
    ("eyebrows", "#9467bd"),
    ("nose", "#ff7f0e"),
    ("mouth", "#d62728"),
]
REGIONS: dict[str, list[int]] = {"eyes": [3, 4], "mouth": [7], "hair": [2], "eyebrows": [5], "nose": [6], "face": [1]}
BACKGROUND, SKIN, HAIR, LEFT_EYE, RIGHT_EYE, EYEBROWS, NOSE, MOUTH = range(8)

TRAIN_SEEDS = range(0, 1_000_000_000)
EVAL_SEED_OFFSET = 2**40  # far above TRAIN_SEEDS: evaluation faces are never seen in training

SS = 4  # subsamples per output pixel and axis: 16 colour samples and 16 label votes per pixel
UNIT = 64.0  # design units across the canvas, so that line widths read as pixels at 64 px


@dataclass
class FaceSample:
    """One rendered face: `image` uint8 [H, W, 3], `labels` uint8 [H, W] class ids, and what drew them."""

    image: np.ndarray
    labels: np.ndarray
    attributes: FaceAttributes


# ------------------------------------------------------------------------------------------------ drawing


class _Frame:
    """Face-local coordinates and the sizes that several layers share, in design units."""

    def __init__(self, attrs: FaceAttributes, u: np.ndarray) -> None:
        theta = math.radians(attrs.rotation)
        self.cos, self.sin = math.cos(theta), math.sin(theta)
        self.origin = (attrs.face_x * UNIT, attrs.face_y * UNIT)
        self.step = UNIT / u.size  # design units per subsample
        dx, dy = (u[None, :] - attrs.face_x) * UNIT, (u[:, None] - attrs.face_y) * UNIT
        # every shape is placed in this rotated frame, so the whole head turns together
        self.x = (self.cos * dx + self.sin * dy).astype(np.float32)  # [n, n] across the face, left to right
        self.y = (self.cos * dy - self.sin * dx).astype(np.float32)  # [n, n] down the face, b at the chin
        self.a, self.b = attrs.face_width * UNIT, attrs.face_height * UNIT  # half-width, half-height
        lx, ly = math.cos(math.radians(attrs.light_angle)), math.sin(math.radians(attrs.light_angle))
        light = np.clip(0.5 - 0.6 * (self.x / self.a * lx + self.y / self.b * ly), 0.0, 1.0)
        self.shade = (1.0 - attrs.shading * light).astype(np.float32)  # [n, n] for skin, hair and clothes
        self.eye_rx = attrs.eye_radius * self.a
        self.eye_ry = self.eye_rx * attrs.eye_openness
        self.eye_x, self.eye_y = attrs.eye_spacing * self.a, attrs.eye_y * self.b  # eyes at (+-eye_x, eye_y)
        self.brow_y = self.eye_y - self.eye_ry - attrs.eyebrow_raise * self.b - attrs.eyebrow_thickness / 2
        self.brow_half = attrs.eyebrow_length * self.eye_rx

    def around(self, cx: float, cy: float, r: float) -> tuple[Region, np.ndarray, np.ndarray]:
        """The grid window that holds the disc of radius `r` around local point (cx, cy), and the local
        coordinates relative to that point inside it: small parts are drawn on small windows, for speed."""
        gx = self.origin[0] + self.cos * cx - self.sin * cy
        gy = self.origin[1] + self.sin * cx + self.cos * cy
        n = self.x.shape[0]
        rows = slice(max(0, math.floor((gy - r) / self.step) - 1), min(n, math.ceil((gy + r) / self.step) + 1))
        cols = slice(max(0, math.floor((gx - r) / self.step) - 1), min(n, math.ceil((gx + r) / self.step) + 1))
        return (rows, cols), self.x[rows, cols] - cx, self.y[rows, cols] - cy


def _background(attrs: FaceAttributes, u: np.ndarray) -> np.ndarray:
    """[n, n, 3] float32; `u` holds the subsample centres as canvas fractions."""
    c1 = np.array(attrs.background_color, dtype=np.float32)
    if attrs.background_pattern == 0:
        return np.broadcast_to(c1, (u.size, u.size, 3)).copy()
    x, y, k = u[None, :], u[:, None], attrs.background_scale
    t = np.zeros((u.size, u.size), dtype=np.float32)  # 0 shows the first colour, 1 the second
    if attrs.background_pattern == 1:
        t += y
    elif attrs.background_pattern == 2:
        t += np.clip(np.hypot(x - 0.5, y - 0.35) / 0.8, 0.0, 1.0)
    elif attrs.background_pattern == 3:
        t += (x + y) * k % 1.0 < 0.5
    else:
        t += np.hypot(x * k % 1.0 - 0.5, y * k % 1.0 - 0.5) < 0.22
    c2 = np.array(attrs.background_color2, dtype=np.float32)
    out: np.ndarray = c1 + (c2 - c1) * t[..., None]
    return out


def _hair_cap(attrs: FaceAttributes, f: _Frame) -> np.ndarray:
    """The hair around the skull; the first 15 % of hair length grow it from nothing (bald) to full."""
    grow = min(1.0, attrs.hair_length / 0.15)
    cap_x = f.a * (0.97 + grow * (0.1 + 0.3 * attrs.hair_volume))  # at 0.97 the cap hides behind the face
    cap_y = f.b * (0.97 + grow * (0.08 + 0.22 * attrs.hair_volume))
    lift = 0.05 * f.b * grow
    if attrs.hair_style != 3:
        return ellipse(f.x, f.y + lift, cap_x, cap_y)
    angle = np.arctan2(f.y + lift, f.x)
    spikes = 1.0 + 0.2 * grow * triangle_wave(angle * 12 / math.pi) * np.clip(-np.sin(angle), 0.0, 1.0)
    return ellipse(f.x, f.y + lift, cap_x * spikes, cap_y * spikes)


def _body(c: Canvas, f: _Frame, attrs: FaceAttributes, cap: np.ndarray) -> np.ndarray:
    """Shoulders, hair behind the head, neck, ears and face, back to front; returns the face's distance field."""
    x, y, a, b = f.x, f.y, f.a, f.b
    shoulders = b * (1.0 + attrs.neck_length)
    if attrs.shoulder_width > 0:
        torso = ellipse(x, y - shoulders - 1.4 * b, attrs.shoulder_width * a, 1.4 * b)
        c.paint(torso, BACKGROUND, attrs.shirt_color, shade=f.shade)  # clothes are not part of the face
    end = b * (-0.35 + 2.0 * attrs.hair_length)
    back = np.maximum(cap, y - end)  # the cap, cut where the hair ends
    if end > 0:  # a curtain down the sides, flaring towards the shoulders, in front of the shirt
        # end > 0 means hair_length > 0.175, so the cap is full grown: 0.97 + 0.1 + 0.3 * volume wide
        half = a * (1.07 + 0.3 * attrs.hair_volume) * (1.0 + 0.3 * attrs.hair_volume * np.clip(y / b, 0.0, 3.0))
        curtain = np.maximum(np.maximum(np.abs(x) - half, -y), y - end + 0.25 * b * (x / half) ** 2)
        back = np.minimum(back, curtain)
    c.paint(back, HAIR, attrs.hair_color, shade=f.shade)
    if attrs.neck_width > 0:
        nw = attrs.neck_width * a
        bottom = shoulders + 0.25 * b * (1.0 - (x / nw) ** 2) if attrs.shoulder_width > 0 else np.inf
        neck = np.maximum(np.abs(x) - nw, np.maximum(0.5 * b - y, y - bottom))
        c.paint(neck, SKIN, scale(attrs.skin_color, 0.82), shade=f.shade)  # in the chin's shadow
    for sign in (-1.0, 1.0) if attrs.ear_size > 0 else ():
        r = attrs.ear_size * a
        at, ex, ey = f.around(sign * 0.96 * a, 0.1 * b, 1.45 * r)
        c.paint(ellipse(ex, ey, r, 1.45 * r), SKIN, attrs.skin_color, shade=f.shade[at], at=at)
    half_width = a * (1.0 - 0.45 * attrs.jaw * np.clip(y / b, 0.0, 1.0) ** 2)  # the jaw shapes the lower half only
    face_d = ellipse(x, y, half_width, b)
    face = c.paint(face_d, SKIN, attrs.skin_color, shade=f.shade)
    cx, cy = min(f.eye_x + 0.1 * a, 0.62 * a), max(f.eye_y + f.eye_ry + 0.15 * b, attrs.nose_y * b)
    for sign in (-1.0, 1.0) if attrs.blush > 0 else ():
        at, bx, by = f.around(sign * cx, cy, 0.2 * a + 2)
        alpha = attrs.blush * np.clip(-ellipse(bx, by, 0.2 * a, 0.11 * b) / 1.5, 0.0, 1.0) * face[at]
        c.tint(alpha, (240, 110, 120), at=at)
    return face_d


def _front_hair(c: Canvas, f: _Frame, attrs: FaceAttributes, cap: np.ndarray, face: np.ndarray) -> None:
    """The cap above a hairline, over the face only; the hairline stays clear of eyebrows and eyes."""
    grow = min(1.0, attrs.hair_length / 0.15)
    top = -f.b * (attrs.hairline + (1.0 - grow) * (1.0 - attrs.hairline))  # short hair recedes to the crown
    xn, b = f.x / f.a, f.b
    if attrs.hair_style == 0:  # straight bangs
        shape = 0.12 * b * xn**2
    elif attrs.hair_style == 1:  # side part, sweeping down towards `hair_side`
        shape = -0.25 * b + 0.6 * b * np.clip((attrs.hair_side * xn + 1) / 2, 0.0, 1.0) ** 2
    elif attrs.hair_style == 2:  # middle part
        shape = 0.15 * b - 0.45 * b * np.clip(1.0 - 1.2 * np.abs(xn), 0.0, 1.0)
    else:  # spiky fringe
        shape = 0.15 * b * triangle_wave(xn * 5)
    line = top + grow * shape  # flat at the crown when bald, so that nothing shows
    line = np.minimum(line, f.brow_y - attrs.eyebrow_thickness - 0.35 * f.brow_half - 0.5)
    fringe = c.paint(np.maximum(np.maximum(cap, face), f.y - line), HAIR, attrs.hair_color, shade=f.shade, outline=0.0)
    # ink along the hairline only: the fringe's other edges continue the hair painted behind the face
    c.fill(fringe & (f.y - line > -attrs.outline_width), attrs.outline_color)


def _eyebrows(c: Canvas, f: _Frame, attrs: FaceAttributes) -> None:
    cos, sin = math.cos(math.radians(attrs.eyebrow_tilt)), math.sin(math.radians(attrs.eyebrow_tilt))
    half, width = f.brow_half, attrs.eyebrow_thickness
    for sign in (-1.0, 1.0):
        at, x, y = f.around(sign * f.eye_x, f.brow_y, half + width + 0.35 * half * abs(attrs.eyebrow_curve))
        xl = sign * x  # mirrored: +xl points away from the nose
        xr, yr = cos * xl + sin * y, cos * y - sin * xl
        t2 = np.clip((xr / half) ** 2, 0.0, 1.0)
        arch = -attrs.eyebrow_curve * 0.35 * half * (1.0 - t2)
        stroke = np.maximum(np.abs(xr) - half, np.abs(yr - arch) - width / 2 * (1.0 - 0.4 * t2))  # tapered ends
        c.paint(stroke, EYEBROWS, attrs.eyebrow_color, outline=0.0, at=at)  # a stroke is all ink already


def _eyes(c: Canvas, f: _Frame, attrs: FaceAttributes) -> None:
    rx, ry = f.eye_rx, f.eye_ry
    for label, sign in ((LEFT_EYE, -1.0), (RIGHT_EYE, 1.0)):
        at, x, y = f.around(sign * f.eye_x, f.eye_y, max(rx, ry) + 1)
        shape = ellipse(x, y, rx, ry)
        eye = c.paint(shape, label, (250, 250, 246), outline=0.0, at=at)
        if attrs.eye_style == 1:
            c.fill(eye, attrs.pupil_color, at=at)
            hx, hy, hr = 0.3 * rx, -0.35 * ry, 0.3 * min(rx, ry)
        else:  # the iris is clipped by the lids, so a half-closed eye hides part of it
            ir = attrs.iris_size * rx
            ix, iy = attrs.gaze_x * max(rx - ir, 0.0), attrs.gaze_y * max(ry - ir, 0.0)
            c.fill(eye & (circle(x - ix, y - iy, ir) < 0), attrs.iris_color, at=at)
            c.fill(eye & (circle(x - ix, y - iy, attrs.pupil_size * ir) < 0), attrs.pupil_color, at=at)
            hx, hy, hr = ix + 0.35 * ir, iy - 0.4 * ir, 0.28 * ir
        c.fill(eye & (circle(x - hx, y - hy, max(hr, 0.45)) < 0), (255, 255, 255), at=at)
        # a lid line even in the flat style: white eyes on pale skin would vanish without it
        c.fill(eye & (shape > -max(attrs.outline_width, 0.7)), attrs.outline_color, at=at)


def _nose(c: Canvas, f: _Frame, attrs: FaceAttributes) -> None:
    w = attrs.nose_size * f.a
    h = w * attrs.nose_shape
    at, x, y = f.around(0.0, attrs.nose_y * f.b, max(w, 1.35 * h) + 1)
    if attrs.nose_style == 0:
        nose = ellipse(x, y, w, 0.75 * h)
    else:  # wedge with its apex on top; the side term is the exact distance to a slanted edge
        height = 1.35 * h
        nose = np.maximum((np.abs(x) * height - w * (y + h)) / math.hypot(height, w), y - 0.35 * h)
    c.paint(nose, NOSE, attrs.nose_color, at=at)


def _mouth(c: Canvas, f: _Frame, attrs: FaceAttributes) -> None:
    w = attrs.mouth_width * f.a
    at, x, y = f.around(0.0, attrs.mouth_y * f.b, 1.1 * w + attrs.mouth_thickness + 2)
    rise = np.clip(1.0 - (x / w) ** 2, 0.0, 1.0)  # 1 in the middle, 0 at the corners
    centre = attrs.smile * 0.45 * w * (rise - 0.5)  # a smile lowers the middle and lifts the corners
    gap = attrs.mouth_openness * 0.75 * w * np.sqrt(rise)
    upper = centre - attrs.mouth_thickness / 2 - 0.2 * gap  # an open mouth drops the jaw more than the lip
    lower = centre + attrs.mouth_thickness / 2 + 0.8 * gap
    shape = np.maximum(np.abs(x) - w, np.maximum(upper - y, y - lower))
    mouth = c.paint(shape, MOUTH, attrs.mouth_color, outline=0.0, at=at)
    if attrs.mouth_openness > 0:
        depth = lower - upper
        tongue = ellipse(x, y - (0.22 * attrs.smile + 0.45 * attrs.mouth_openness) * w, 0.5 * w, 0.3 * w)
        c.fill(mouth & (tongue < 0) & (y > upper + 0.5 * depth), mix(attrs.mouth_color, (235, 120, 130), 0.7), at=at)
        if attrs.teeth:
            c.fill(mouth & (y < upper + 0.28 * depth) & (depth > 2.5 * attrs.mouth_thickness), (248, 248, 240), at=at)
        c.fill(mouth & (shape > -attrs.outline_width), attrs.outline_color, at=at)  # lips over teeth and tongue


def render(attrs: FaceAttributes, size: int = 64) -> FaceSample:
    """Draw `attrs` at `size` x `size`: an antialiased image and the exact label map of the same shapes."""
    if not 16 <= size <= 1024:
        raise InputError(f"size is {size}, it must lie in [16, 1024]")
    n = size * SS
    u = ((np.arange(n, dtype=np.float32) + 0.5) / n).astype(np.float32)  # subsample centres, canvas fractions
    f = _Frame(attrs, u)
    c = Canvas(_background(attrs, u), ss=SS, ink=attrs.outline_color, outline=attrs.outline_width)
    cap = _hair_cap(attrs, f)
    face = _body(c, f, attrs, cap)
    _front_hair(c, f, attrs, cap, face)
    if attrs.eyebrows:
        _eyebrows(c, f, attrs)
    _eyes(c, f, attrs)
    _nose(c, f, attrs)
    _mouth(c, f, attrs)
    image, labels = c.resolve(len(CLASSES))
    if attrs.texture > 0:  # paper-like grain on the image only: labels describe the drawing, not the paper
        rng = np.random.default_rng(attrs.texture_seed)
        coarse = Image.fromarray(rng.standard_normal((5, 5)).astype(np.float32))
        grain = 0.8 * np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))
        grain = grain + 0.5 * rng.standard_normal((size, size))
        image = image + (attrs.texture * 255.0 * grain)[..., None]
    return FaceSample(np.clip(np.rint(image), 0, 255).astype(np.uint8), labels, attrs)


def sample(seed: int, size: int = 64) -> FaceSample:
    """The face of one seed: `render(sample_attributes(np.random.default_rng(seed)), size)`."""
    return render(sample_attributes(np.random.default_rng(seed)), size)


def eval_seeds(n: int) -> list[int]:
    """The first `n` evaluation seeds; none of them lies in `TRAIN_SEEDS`."""
    if n < 0:
        raise InputError(f"n is {n}, it must be >= 0")
    return [EVAL_SEED_OFFSET + i for i in range(n)]


def mirror(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-right mirrored images [N, H, W, 3] and labels [N, H, W], the eyes' labels swapped: the left eye
    is the one on the image's left. Every random choice of the domain is symmetric (rotation, light angle
    around 270 degrees, hair side), so a mirrored face is as likely as the face itself."""
    flipped = labels[:, :, ::-1].copy()
    left, right = flipped == LEFT_EYE, flipped == RIGHT_EYE
    flipped[left], flipped[right] = RIGHT_EYE, LEFT_EYE
    return images[:, :, ::-1].copy(), flipped


def batch(seeds: Sequence[int], size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, H, W, 3] and labels uint8 [N, H, W] of `seeds`, in order, for training loops."""
    if len(seeds) == 0:
        raise InputError("seeds is empty")
    samples = [sample(int(seed), size) for seed in seeds]
    return np.stack([s.image for s in samples]), np.stack([s.labels for s in samples])
