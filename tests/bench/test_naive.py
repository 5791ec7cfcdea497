"""The naive baseline optimises the same objective as `optimize_edit`: equal losses, equal segmentation."""

from __future__ import annotations

import pytest
import torch

from bench.inputs import edit_input
from bench.naive import FINAL_TOLERANCE, START_TOLERANCE, compare, naive_segment
from engine import Bundle, render


def test_the_official_segmentation_equals_the_engines(tiny_bundle: Bundle) -> None:
    w = tiny_bundle.generator.sample_w_plus(1, seed=2, psi=0.7)
    assert torch.equal(naive_segment(tiny_bundle, w), render(tiny_bundle, w).labels[0])


def test_naive_and_engine_edits_reach_the_same_loss(tiny_bundle: Bundle) -> None:
    perceptual = tiny_bundle.perceptual(allow_random_backbone=True)
    result = compare(tiny_bundle, edit_input(tiny_bundle), steps=5, reps=1, perceptual=perceptual)
    assert result["region_pixels"] > 0 and result["same_region"]
    assert result["start_loss_relative_difference"] <= START_TOLERANCE
    assert result["equal_quality"], result
    # over 5 steps of the tiny model rounding stays small: the fixed floor applies, not the measured spread
    assert result["final_loss_relative_difference"] <= FINAL_TOLERANCE <= result["final_tolerance"]
    assert result["final_tolerance"] == pytest.approx(max(FINAL_TOLERANCE, 2 * result["rounding_spread"]), rel=0.01)
    engine, naive = result["final_loss"]["engine"], result["final_loss"]["naive"]
    assert engine["region_accuracy"] == naive["region_accuracy"]
    assert set(result["ms_per_step"]) == {"engine", "naive"}  # both measured (their values are not checked)
