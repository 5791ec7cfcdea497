"""`FaceAttributes`, every parameter of one procedural cartoon face, and `sample_attributes`, their distribution.

Units: the face centre and half-axes are fractions of the canvas; other lengths are fractions of the face's
half-width `a` or half-height `b`; line widths are pixels on a 64 px canvas (they scale with the render size).
Colours are RGB 0-255.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.domains.shapes import Color, clip_color, mix, scale
from engine.errors import InputError


@dataclass(frozen=True)
class FaceAttributes:
    """Every parameter of one face; `render` is a pure function of it."""

    # head
    face_x: float  # centre, fraction of canvas width
    face_y: float  # centre, fraction of canvas height
    face_width: float  # half-width a, fraction of canvas
    face_height: float  # half-height b, fraction of canvas
    jaw: float  # -0.3 square jaw .. 0.7 pointed chin
    rotation: float  # degrees, positive turns clockwise on screen
    ear_size: float  # ear half-width / a; 0 = no ears
    neck_width: float  # neck half-width / a; 0 = floating head
    neck_length: float  # chin to shoulders / b
    shoulder_width: float  # shoulder half-width / a; 0 = no shoulders (the neck runs off the canvas)
    # eyes (left and right mirror each other)
    eye_spacing: float  # eye centre distance from the middle / a
    eye_y: float  # eye centre height / b, negative = above the face centre
    eye_radius: float  # eye half-width / a
    eye_openness: float  # eye half-height / half-width
    eye_style: int  # 0 white eye with iris and pupil, 1 solid dark dot
    iris_size: float  # iris radius / eye half-width
    pupil_size: float  # pupil radius / iris radius
    gaze_x: float  # -1 .. 1, iris offset within the free room of the eye
    gaze_y: float
    # eyebrows
    eyebrows: bool
    eyebrow_thickness: float  # px at 64
    eyebrow_tilt: float  # degrees, positive raises the inner ends (worried), negative lowers them (angry)
    eyebrow_raise: float  # gap above the eye / b
    eyebrow_length: float  # half-length / eye half-width
    eyebrow_curve: float  # arch height, negative sags
    # nose
    nose_style: int  # 0 round button, 1 wedge
    nose_size: float  # half-width / a
    nose_shape: float  # height / width
    nose_y: float  # centre / b
    # mouth
    mouth_y: float  # centre / b
    mouth_width: float  # half-width / a
    mouth_openness: float  # 0 closed line .. 1 wide open
    smile: float  # -1 frown .. 1 smile
    mouth_thickness: float  # closed-line width, px at 64
    teeth: bool  # upper teeth show when the mouth is open
    # hair
    hair_length: float  # 0 bald, 0.1 buzz cut, 0.2 short, 1 to the shoulders
    hair_volume: float  # 0 close to the head .. 1 big
    hair_style: int  # hairline: 0 straight bangs, 1 side part, 2 middle part, 3 spiky
    hair_side: int  # -1 or 1, which side a side part sweeps to
    hairline: float  # forehead top above the face centre / b
    # colours and rendering style
    skin_color: Color
    hair_color: Color
    eyebrow_color: Color
    iris_color: Color
    pupil_color: Color
    nose_color: Color
    mouth_color: Color  # the closed line and the open interior
    shirt_color: Color  # clothes count as background: they are not part of the face
    outline_color: Color
    background_color: Color
    background_color2: Color
    background_pattern: int  # 0 flat, 1 vertical gradient, 2 radial gradient, 3 stripes, 4 dots
    background_scale: float  # pattern repeats across the canvas
    outline_width: float  # px at 64; 0 = flat style without outlines
    blush: float  # 0 none .. 1 strong pink cheeks
    shading: float  # 0 flat .. 0.35 darkening away from the light
    light_angle: float  # degrees, direction towards the light (270 = straight above)
    texture: float  # amplitude of paper-like noise, fraction of full scale
    texture_seed: int  # seeds the texture noise so that rendering stays deterministic

    def __post_init__(self) -> None:
        """Refuse records that `render` cannot draw: unknown styles, sizes that are not positive, bad colours."""
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} is {getattr(self, name)!r}, it must be one of {sorted(allowed)}")
        for name in _POSITIVE:
            if not getattr(self, name) > 0:
                raise InputError(f"{name} is {getattr(self, name)!r}, it must be > 0")
        for name, value in vars(self).items():
            if name.endswith("_color") or name == "background_color2":
                if len(value) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in value):
                    raise InputError(f"{name} is {value!r}, it must be three ints in 0-255")
            elif isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"{name} is {value!r}, it must be finite")


_CHOICES: dict[str, set[int]] = {
    "eye_style": {0, 1},
    "nose_style": {0, 1},
    "hair_style": {0, 1, 2, 3},
    "hair_side": {-1, 1},
    "background_pattern": {0, 1, 2, 3, 4},
}
_POSITIVE = ("face_width", "face_height", "eye_radius", "eye_openness", "iris_size", "pupil_size",
             "eyebrow_thickness", "eyebrow_length", "nose_size", "nose_shape", "mouth_width", "mouth_thickness",
             "background_scale")  # fmt: skip


_SKINS: list[Color] = [(255, 224, 196), (241, 194, 167), (234, 192, 134), (224, 172, 105), (198, 134, 66),
                       (160, 102, 60), (120, 74, 44), (255, 205, 148)]  # fmt: skip
_HAIRS: list[Color] = [(28, 24, 24), (40, 30, 26), (60, 40, 28), (105, 66, 36), (150, 100, 55), (222, 188, 110),
                       (184, 84, 36), (165, 165, 170)]  # fmt: skip
_IRISES: list[Color] = [(100, 64, 36), (64, 120, 196), (64, 136, 76), (118, 128, 140), (140, 108, 56), (128, 80, 170)]


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _chance(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def _pick(rng: np.random.Generator, options: Sequence[Color], jitter: float) -> Color:
    base = options[int(rng.integers(len(options)))]
    return clip_color([c + rng.uniform(-jitter, jitter) for c in base])


def _hsv(h: float, s: float, v: float) -> Color:
    return clip_color([255 * c for c in colorsys.hsv_to_rgb(h % 1.0, s, v)])


def sample_attributes(rng: np.random.Generator) -> FaceAttributes:
    """Draw one plausible face, rare edge cases included (bald, no eyebrows, sleepy eyes, odd colours)."""
    face_width = _u(rng, 0.22, 0.3)
    face_height = min(0.4, face_width * _u(rng, 1.02, 1.3))
    eye_radius = _u(rng, 0.16, 0.3)
    eye_openness = _u(rng, 0.2, 0.32) if _chance(rng, 0.06) else _u(rng, 0.5, 1.15)
    mouth_y, nose_size, nose_shape = _u(rng, 0.42, 0.6), _u(rng, 0.1, 0.2), _u(rng, 0.7, 1.6)
    # the nose must end above the mouth: its bottom lies about 0.9 * height below its centre
    nose_y = min(_u(rng, 0.12, 0.3), mouth_y - 0.14 - 0.9 * nose_size * nose_shape * face_width / face_height)
    # eyes keep apart from each other and from the nose, and stay inside the face
    min_spacing = max(0.36, eye_radius * 1.2 + 0.04, eye_radius + nose_size + 0.04)
    skin = _hsv(rng.random(), _u(rng, 0.4, 0.75), _u(rng, 0.75, 1.0)) if _chance(rng, 0.05) else _pick(rng, _SKINS, 12)
    hair = _hsv(rng.random(), _u(rng, 0.5, 0.9), _u(rng, 0.4, 0.9)) if _chance(rng, 0.1) else _pick(rng, _HAIRS, 10)
    if math.dist(hair, skin) < 90:  # keep the hairline visible against the forehead
        hair = scale(hair, 0.45)
    # user drawings often sit on white paper, so near-white gets a share of its own
    background = (
        _pick(rng, [(250, 250, 250)], 6)
        if _chance(rng, 0.12)
        else _hsv(rng.random(), _u(rng, 0.05, 0.6), _u(rng, 0.45, 0.98))
    )
    if math.dist(background, skin) < 70:  # the face outline alone should not carry the head's silhouette
        background = scale(background, 0.55)
    roll = rng.random()
    hair_length = 0.0 if roll < 0.04 else _u(rng, 0.03, 0.14) if roll < 0.14 else _u(rng, 0.15, 1.0)
    ink = _pick(rng, [(22, 20, 24), (58, 38, 28), scale(skin, 0.35)], 6)
    nose = (
        (220, 40, 40) if _chance(rng, 0.03) else mix(scale(skin, _u(rng, 0.72, 0.9)), (230, 100, 110), _u(rng, 0, 0.3))
    )
    return FaceAttributes(
        face_x=_u(rng, 0.42, 0.58),
        face_y=_u(rng, 0.43, 0.52),
        face_width=face_width,
        face_height=face_height,
        jaw=_u(rng, -0.3, 0.7),
        rotation=_u(rng, -8.0, 8.0),
        ear_size=_u(rng, 0.13, 0.22) if _chance(rng, 0.75) else 0.0,
        neck_width=_u(rng, 0.3, 0.5) if _chance(rng, 0.85) else 0.0,
        neck_length=_u(rng, 0.15, 0.45),
        shoulder_width=_u(rng, 1.4, 2.2) if _chance(rng, 0.7) else 0.0,
        eye_spacing=_u(rng, min_spacing, min(0.58, 0.88 - eye_radius)),
        eye_y=_u(rng, -0.18, 0.06),
        eye_radius=eye_radius,
        eye_openness=eye_openness,
        eye_style=int(_chance(rng, 0.25)),
        iris_size=_u(rng, 0.45, 0.9),
        pupil_size=_u(rng, 0.3, 0.7),
        gaze_x=_u(rng, -0.6, 0.6),
        gaze_y=_u(rng, -0.4, 0.4),
        eyebrows=_chance(rng, 0.88),
        eyebrow_thickness=_u(rng, 1.3, 2.8),
        eyebrow_tilt=_u(rng, -18.0, 18.0),
        eyebrow_raise=_u(rng, 0.06, 0.2),
        eyebrow_length=_u(rng, 0.9, 1.5),
        eyebrow_curve=_u(rng, -0.2, 0.6),
        nose_style=int(rng.integers(2)),
        nose_size=nose_size,
        nose_shape=nose_shape,
        nose_y=nose_y,
        mouth_y=mouth_y,
        mouth_width=_u(rng, 0.25, 0.55),
        mouth_openness=0.0 if _chance(rng, 0.3) else _u(rng, 0.05, 1.0),
        smile=float(np.clip(rng.normal(0.35, 0.45), -1.0, 1.0)),
        mouth_thickness=_u(rng, 1.2, 2.2),
        teeth=_chance(rng, 0.5),
        hair_length=hair_length,
        hair_volume=_u(rng, 0.0, 1.0),
        hair_style=int(rng.integers(4)),
        hair_side=int(rng.choice([-1, 1])),
        hairline=_u(rng, 0.3, 0.62),
        skin_color=skin,
        hair_color=hair,
        eyebrow_color=ink if _chance(rng, 0.2) else scale(hair, 0.6),
        iris_color=_pick(rng, _IRISES, 15),
        pupil_color=_pick(rng, [(16, 14, 18), (40, 26, 20), (20, 24, 48)], 8),
        nose_color=nose,
        mouth_color=_pick(rng, [(120, 30, 40), (90, 22, 30), (150, 40, 50), (40, 24, 26)], 15),
        shirt_color=_hsv(rng.random(), _u(rng, 0.1, 0.8), _u(rng, 0.25, 0.95)),
        outline_color=ink,
        background_color=background,
        background_color2=_hsv(rng.random(), _u(rng, 0.05, 0.5), _u(rng, 0.5, 1.0)),
        background_pattern=int(rng.choice(5, p=[0.35, 0.25, 0.15, 0.12, 0.13])),
        background_scale=_u(rng, 4.0, 9.0),
        outline_width=0.0 if _chance(rng, 0.15) else _u(rng, 0.6, 1.6),
        blush=_u(rng, 0.25, 0.6) if _chance(rng, 0.35) else 0.0,
        shading=_u(rng, 0.0, 0.3),
        light_angle=_u(rng, 200.0, 340.0),
        texture=0.0 if _chance(rng, 0.3) else _u(rng, 0.005, 0.025),
        texture_seed=int(rng.integers(2**31)),
    )
