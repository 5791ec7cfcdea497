from __future__ import annotations

import itertools
import re
from dataclasses import replace
from functools import cache

import numpy as np
import pytest

from engine.domains import (
    CLASSES,
    EVAL_SEED_OFFSET,
    REGIONS,
    TRAIN_SEEDS,
    FaceAttributes,
    FaceSample,
    batch,
    eval_seeds,
    mirror,
    render,
    sample,
    sample_attributes,
)
from engine.errors import InputError

BACKGROUND, SKIN, HAIR, LEFT_EYE, RIGHT_EYE, EYEBROWS, NOSE, MOUTH = range(8)


@cache
def _samples() -> tuple[FaceSample, ...]:
    return tuple(sample(seed) for seed in range(48))


def _base(seed: int = 3, **changes: object) -> FaceAttributes:
    """A face with the features under test switched on, upright, so that counts move only with the change."""
    attrs = sample_attributes(np.random.default_rng(seed))
    attrs = replace(attrs, rotation=0.0, eyebrows=True, hair_length=0.4, mouth_openness=0.3, eye_openness=0.8)
    return replace(attrs, **changes)  # type: ignore[arg-type]


def _flat(attrs: FaceAttributes) -> FaceAttributes:
    """The same face without shading, blush, outlines, texture, pattern or clothes: every part one colour."""
    return replace(
        attrs, shading=0.0, blush=0.0, outline_width=0.0, texture=0.0, background_pattern=0, shoulder_width=0.0
    )


def _count(attrs: FaceAttributes, *classes: int) -> int:
    return int(np.isin(render(attrs).labels, classes).sum())


def test_classes_and_regions_are_well_formed() -> None:
    names = [name for name, _ in CLASSES]
    colors = [color for _, color in CLASSES]
    assert names[:3] == ["background", "skin", "hair"] and names[3:5] == ["left_eye", "right_eye"]
    assert len(set(names)) == len(names) == 8 and len(set(colors)) == len(colors)
    assert all(re.fullmatch(r"#[0-9a-f]{6}", color) for color in colors)
    assert REGIONS["eyes"] == [3, 4] and set(REGIONS) == {"eyes", "mouth", "hair", "eyebrows", "nose", "face"}
    assert all(0 < i < len(CLASSES) for ids in REGIONS.values() for i in ids)


def test_sample_is_deterministic_and_seeds_differ() -> None:
    a, b = sample(11), sample(11)
    assert a.attributes == b.attributes
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    again = render(a.attributes)  # texture noise comes from the attributes, not from global state
    assert np.array_equal(again.image, a.image) and np.array_equal(again.labels, a.labels)
    c = sample(12)
    assert c.attributes != a.attributes and not np.array_equal(c.image, a.image)
    assert not np.array_equal(c.labels, a.labels)


def test_shapes_dtypes_and_batch() -> None:
    s = sample(5, size=32)
    assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
    assert s.labels.shape == (32, 32) and s.labels.dtype == np.uint8
    images, labels = batch([5, 6, 7], size=32)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (3, 32, 32) and labels.dtype == np.uint8
    assert np.array_equal(images[0], s.image) and np.array_equal(labels[0], s.labels)


def test_every_class_appears_and_ids_are_valid() -> None:
    seen: set[int] = set()
    for s in _samples():
        present = set(np.unique(s.labels).tolist())
        assert present <= set(range(len(CLASSES)))
        assert {0, SKIN, LEFT_EYE, RIGHT_EYE, 6, MOUTH} <= present, s.attributes
        assert (EYEBROWS in present) == s.attributes.eyebrows, s.attributes
        if s.attributes.hair_length == 0:
            assert HAIR not in present
        elif s.attributes.hair_length >= 0.15:
            assert HAIR in present
        seen |= present
    assert seen == set(range(len(CLASSES)))
    assert not all(s.attributes.eyebrows for s in _samples())  # the rare case occurs in a few dozen faces


def test_left_eye_is_on_the_image_left() -> None:
    for s in _samples()[:8]:
        columns = np.nonzero(s.labels == LEFT_EYE)[1], np.nonzero(s.labels == RIGHT_EYE)[1]
        assert columns[0].mean() < columns[1].mean()


def test_mirror_flips_the_face_and_keeps_the_left_eye_on_the_left() -> None:
    images, labels = batch([5, 6])
    m_images, m_labels = mirror(images, labels)
    assert np.array_equal(m_images, images[:, :, ::-1])
    for k in (BACKGROUND, SKIN, HAIR, EYEBROWS, NOSE, MOUTH):
        assert np.array_equal(m_labels == k, (labels == k)[:, :, ::-1])
    assert np.array_equal(m_labels == LEFT_EYE, (labels == RIGHT_EYE)[:, :, ::-1])
    for lab in m_labels:
        assert np.nonzero(lab == LEFT_EYE)[1].mean() < np.nonzero(lab == RIGHT_EYE)[1].mean()
    twice = mirror(m_images, m_labels)
    assert np.array_equal(twice[0], images) and np.array_equal(twice[1], labels)


@pytest.mark.parametrize(
    ("field", "values", "classes"),
    [
        ("eye_radius", [0.16, 0.22, 0.28], (LEFT_EYE, RIGHT_EYE)),
        ("eye_openness", [0.3, 0.6, 1.0], (LEFT_EYE, RIGHT_EYE)),
        ("mouth_openness", [0.0, 0.5, 1.0], (MOUTH,)),
        ("mouth_width", [0.25, 0.4, 0.55], (MOUTH,)),
        ("hair_length", [0.05, 0.15, 0.4, 0.7], (HAIR,)),
        ("hair_volume", [0.0, 0.5, 1.0], (HAIR,)),
        ("eyebrow_thickness", [1.3, 2.0, 2.8], (EYEBROWS,)),
        ("nose_size", [0.1, 0.15, 0.2], (6,)),
    ],
)
def test_attributes_drive_their_part(field: str, values: list[float], classes: tuple[int, ...]) -> None:
    for seed in (3, 4):
        counts = [_count(_base(seed, **{field: v}), *classes) for v in values]
        assert all(x < y for x, y in itertools.pairwise(counts)), (seed, counts)


def test_switches_remove_their_part() -> None:
    assert _count(_base(eyebrows=False), EYEBROWS) == 0 and _count(_base(eyebrows=True), EYEBROWS) > 0
    assert _count(_base(hair_length=0.0), HAIR) == 0


def test_smile_lifts_the_mouth_corners() -> None:
    def corner_minus_middle(smile: float) -> float:
        labels = render(_base(smile=smile, mouth_openness=0.0)).labels
        rows, cols = np.nonzero(labels == MOUTH)
        middle = rows[np.abs(cols - cols.mean()) <= 1].mean()
        corners = rows[(cols == cols.min()) | (cols == cols.max())].mean()
        return float(middle - corners)  # rows grow downwards: > 0 when the middle hangs below the corners

    frown, flat, smile = (corner_minus_middle(s) for s in (-1.0, 0.0, 1.0))
    assert frown < flat < smile and frown < 0 < smile


def test_image_colours_match_the_labels() -> None:
    for seed in (0, 1, 2):
        attrs = _flat(sample_attributes(np.random.default_rng(seed)))
        s = render(attrs)
        for cls, color in ((0, attrs.background_color), (SKIN, attrs.skin_color), (HAIR, attrs.hair_color)):
            pixels = s.image[s.labels == cls].astype(float)
            if cls == HAIR and attrs.hair_length == 0:
                continue
            assert np.abs(np.median(pixels, axis=0) - color).max() <= 4, (seed, cls)
        # boundaries line up: pixels showing a part's pure colour carry that part's label
        for cls, color in ((0, attrs.background_color), (SKIN, attrs.skin_color)):
            pure = np.abs(s.image.astype(int) - color).max(axis=-1) <= 3
            assert pure.sum() > 200 and (s.labels[pure] == cls).mean() > 0.97, (seed, cls)


def test_geometry_does_not_depend_on_size() -> None:
    attrs = sample_attributes(np.random.default_rng(9))
    small, large = render(attrs, 32).labels, render(attrs, 128).labels
    for cls in range(len(CLASSES)):
        assert abs((small == cls).mean() - (large == cls).mean()) < 0.01, cls


def test_eval_seeds_never_meet_training_seeds() -> None:
    seeds = eval_seeds(4)
    assert seeds == eval_seeds(4) and len(set(seeds)) == 4
    assert min(seeds) >= EVAL_SEED_OFFSET > TRAIN_SEEDS[-1]
    assert not any(seed in TRAIN_SEEDS for seed in seeds)
    assert sample(seeds[0]).image.shape == (64, 64, 3)


def test_bad_input_is_refused() -> None:
    attrs = sample_attributes(np.random.default_rng(0))
    with pytest.raises(InputError, match="size"):
        render(attrs, size=8)
    with pytest.raises(InputError, match="hair_style"):
        replace(attrs, hair_style=7)
    with pytest.raises(InputError, match="eye_radius"):
        replace(attrs, eye_radius=0.0)
    with pytest.raises(InputError, match="skin_color"):
        replace(attrs, skin_color=(300, 0, 0))
    with pytest.raises(InputError, match="empty"):
        batch([])
    with pytest.raises(InputError):
        eval_seeds(-1)
