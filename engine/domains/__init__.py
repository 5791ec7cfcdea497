"""Procedural training domains: images with exact per-pixel labels, drawn from a seed, that need no download."""

from engine.domains.face_attributes import FaceAttributes, sample_attributes
from engine.domains.faces import (
    CLASSES,
    EVAL_SEED_OFFSET,
    REGIONS,
    TRAIN_SEEDS,
    FaceSample,
    batch,
    eval_seeds,
    mirror,
    render,
    sample,
)

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
