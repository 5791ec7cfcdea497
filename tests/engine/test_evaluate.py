from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.bundle import Bundle, load_bundle
from engine.domains import faces
from engine.errors import InputError
from engine.evaluate import (
    PSNR_CAP,
    EvalConfig,
    MaskEdit,
    evaluate_bundle,
    evaluate_inversion,
    evaluate_optimization_edit,
    evaluate_sampling,
    evaluate_vector,
    faces_heldout,
    feature_extractor,
    kid,
    psnr_outside,
    segmentation_scores,
)
from engine.perceptual import ConvPerceptual, ConvPerceptualConfig, PerceptualLoss
from engine.rendering import render
from tests.conftest import save_tiny_model


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models cost per-op overhead, not arithmetic: one thread is faster here, and on a shared CPU
    (a training run beside the suite) extra threads only contend. Restored for the other modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def perceptual() -> PerceptualLoss:
    torch.manual_seed(0)
    return ConvPerceptual(ConvPerceptualConfig(widths=(4, 8))).freeze()


def tiny_heldout(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out faces cut to the tiny bundle's 24x32 content box, labels folded onto its 5 classes."""
    images, labels = faces.batch(faces.eval_seeds(n), size=32)
    return images[:, 4:28], np.minimum(labels[:, 4:28], 4)


# ---------------------------------------------------------------------------------------------- measures


def test_kid_is_about_zero_for_one_distribution_and_positive_for_a_shifted_one() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 16, generator=gen), torch.randn(200, 16, generator=gen)
    same, _ = kid(a, b, subsets=20, subset_size=100)
    shifted, shifted_std = kid(a, b + 0.5, subsets=20, subset_size=100)
    assert shifted > 10 * abs(same)
    assert shifted > 3 * shifted_std


def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel_and_symmetric() -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 3, generator=gen, dtype=torch.float64), torch.randn(6, 3, generator=gen, dtype=torch.float64)

    def k(x: torch.Tensor, y: torch.Tensor) -> float:
        return float((x @ y / 3 + 1) ** 3)

    m = 6
    xx = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(m)) / (m * m)
    # whole sets in every subset: the estimate no longer depends on the draw, so it must equal the formula
    mean, std = kid(a, b, subsets=3, subset_size=m)
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)
    assert kid(b, a, subsets=3, subset_size=m)[0] == pytest.approx(mean, rel=1e-9)


def test_kid_refuses_features_of_different_depths() -> None:
    with pytest.raises(InputError):
        kid(torch.zeros(4, 3), torch.zeros(4, 5))


def test_segmentation_scores_are_one_for_identical_maps_and_exact_for_a_hand_made_pair() -> None:
    maps = torch.randint(0, 4, (3, 5, 5), generator=torch.Generator().manual_seed(0))
    assert segmentation_scores(maps, maps.clone(), 4) == (1.0, 1.0)
    target = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [0, 0]]])
    predicted = torch.tensor([[[0, 0], [1, 1]], [[0, 0], [0, 0]]])
    # image 1: class 0 has IoU 1/2, class 1 2/3; image 2: class 0 only, IoU 1
    # pooled: class 0 5/6 (5 shared of 6 in either), class 1 2/3
    mean, pooled = segmentation_scores(predicted, target, 2)
    assert mean == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1) / 2)
    assert pooled == pytest.approx((5 / 6 + 2 / 3) / 2)


def test_psnr_outside_ignores_the_region_and_is_capped_for_identical_pixels() -> None:
    x = torch.zeros(3, 8, 8)
    y = x.clone()
    y[:, :4] = 0.2  # a difference of 0.1 on the [0, 1] scale: 20 dB
    y[:, 4:] = 1.0  # a large difference, inside the region
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[4:] = True
    assert psnr_outside(x, y, region) == pytest.approx(20.0)
    assert psnr_outside(x, x, torch.zeros(8, 8, dtype=torch.bool)) == PSNR_CAP
    assert psnr_outside(x, y, torch.ones(8, 8, dtype=torch.bool)) is None


def test_mask_edit_grows_its_class_only_over_the_allowed_classes() -> None:
    labels = torch.zeros(9, 9, dtype=torch.long)
    labels[4, 4] = 3
    labels[:, 6:] = 2
    grown = MaskEdit("grow", grow=3, into=(0,), pixels=2).apply(labels)
    assert int((grown == 3).sum()) == 5 * 4  # rows 2..6, columns 2..5: column 6 is class 2
    assert bool((grown[:, 6:] == 2).all())


def test_the_random_feature_extractor_is_seeded_and_leaves_the_global_rng_alone(tiny_bundle: Bundle) -> None:
    images = torch.rand(3, 3, 24, 32) * 2 - 1
    torch.manual_seed(7)
    first = feature_extractor(tiny_bundle, seed=3)
    after = torch.rand(1)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(1), after)  # building the extractor drew nothing from the global RNG
    assert "random" in first.name
    assert torch.equal(first(images), feature_extractor(tiny_bundle, seed=3)(images))
    assert not torch.equal(first(images), feature_extractor(tiny_bundle, seed=4)(images))


def test_faces_heldout_refuses_a_bundle_without_the_faces_classes(tiny_bundle: Bundle) -> None:
    with pytest.raises(InputError, match="faces classes"):
        faces_heldout(tiny_bundle)


# ---------------------------------------------------------------------------------------------- evaluations


def test_sampling_kid_of_random_weights_is_far_above_that_of_two_held_out_sets(tiny_bundle: Bundle) -> None:
    images = tiny_heldout(32)[0]
    extractor = feature_extractor(tiny_bundle)
    as_tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    faces_vs_faces, _ = kid(extractor(as_tensor[:16]), extractor(as_tensor[16:]), subsets=4, subset_size=16)
    scores = evaluate_sampling(tiny_bundle, 16, 0, real=images[16:], subsets=4, subset_size=16)
    assert scores["kid_mean"] > 10 * abs(faces_vs_faces)
    assert scores["truncation"] == 0.7 and scores["extractor"] == extractor.name
    assert evaluate_sampling(tiny_bundle, 16, 0, real=images[16:], subsets=4, subset_size=16) == scores


def test_a_zero_vector_succeeds_nowhere_and_changes_nothing_outside(tiny_bundle: Bundle) -> None:
    latents = tiny_bundle.generator.sample_w_plus(3, seed=0)
    zero = torch.zeros(8, 32)
    scores = evaluate_vector(tiny_bundle, latents, zero, 1.0, target_class=1, direction=1)
    assert scores["success"] == 0.0 and scores["latents"] == 3
    assert scores["psnr_outside_mean"] == PSNR_CAP


def test_a_shrinking_vector_is_judged_only_where_its_class_is_there_to_shrink(tiny_bundle: Bundle) -> None:
    latents = tiny_bundle.generator.sample_w_plus(4, seed=0)
    counts = torch.stack([torch.bincount(lab.flatten(), minlength=3) for lab in render(tiny_bundle, latents).labels])
    absent = [c for c in range(3) if int(counts[:, c].max()) == 0]
    present = [c for c in range(3) if int(counts[:, c].min()) > 3]
    assert absent and present, counts  # the tiny model's samples show some classes everywhere and some nowhere
    vector = tiny_bundle.vectors["grow"]
    gone = evaluate_vector(tiny_bundle, latents, vector, 2.0, target_class=absent[0], direction=-1)
    assert gone["applicable"] == 0 and gone["success"] is None and gone["success_all"] == 0.0
    assert gone["latents"] == 4 and gone["psnr_outside_mean"] is not None
    grow = evaluate_vector(tiny_bundle, latents, vector, 2.0, target_class=absent[0], direction=1)
    assert grow["applicable"] == 4 and grow["success"] == grow["success_all"]
    there = evaluate_vector(tiny_bundle, latents, vector, 2.0, target_class=present[0], direction=-1)
    assert there["applicable"] == 4 and there["success"] == there["success_all"]


def test_a_vector_cannot_succeed_in_both_directions(tiny_bundle: Bundle) -> None:
    latents = tiny_bundle.generator.sample_w_plus(4, seed=0)
    vector = tiny_bundle.vectors["grow"]
    up = evaluate_vector(tiny_bundle, latents, vector, 2.0, target_class=[1, 2], direction=1)
    down = evaluate_vector(tiny_bundle, latents, vector, 2.0, target_class=[1, 2], direction=-1)
    assert up["success_all"] + down["success_all"] <= 1.0
    assert up["psnr_outside_mean"] is None or math.isfinite(up["psnr_outside_mean"])
    with pytest.raises(InputError, match="direction"):
        evaluate_vector(tiny_bundle, latents, vector, 1.0, target_class=1, direction=0)


def test_inversion_returns_finite_scores_and_one_latent_per_image(
    tiny_bundle: Bundle, perceptual: PerceptualLoss
) -> None:
    images, labels = tiny_heldout(2)
    scores, latents = evaluate_inversion(tiny_bundle, images, labels, steps=2, perceptual=perceptual)
    assert latents.shape == (2, 8, 32)
    assert all(math.isfinite(v) for v in scores.values())
    assert scores["psnr_min"] <= scores["psnr_mean"]
    assert 0.0 <= scores["miou_mean"] <= 1.0 and 0.0 <= scores["miou_pooled"] <= 1.0
    assert scores["perceptual_mean"] >= 0.0
    with pytest.raises(InputError, match="content box"):
        evaluate_inversion(tiny_bundle, np.zeros((1, 32, 32, 3), np.uint8), labels[:1], perceptual=perceptual)


def test_an_optimisation_edit_reports_the_share_of_the_requested_change(
    tiny_bundle: Bundle, perceptual: PerceptualLoss
) -> None:
    w = tiny_bundle.generator.sample_w_plus(1, seed=0)
    current = render(tiny_bundle, w).labels[0]
    mask = current.clone()
    mask[8:12, 10:14] = (current[8:12, 10:14] + 1) % 5
    scores = evaluate_optimization_edit(tiny_bundle, w, mask, steps=2, perceptual=perceptual)
    assert scores["changed_pixels"] == 16
    assert 0.0 <= scores["reached"] <= 1.0
    assert scores["psnr_outside"] is None or scores["psnr_outside"] > 0


def test_evaluate_bundle_runs_end_to_end_and_returns_json(tmp_path: Path) -> None:
    bundle = load_bundle(save_tiny_model(tmp_path) / "tiny")
    bundle.spec.vectors["grow"] |= {"target_class": "c1", "direction": 1}
    bundle.vectors["untargeted"] = torch.zeros(8, 32)  # no metadata: listed as skipped
    config = EvalConfig(
        images=3,
        invert_steps=1,
        edit_steps=1,
        edit_images=1,
        ablation_images=2,
        kid_subsets=2,
        kid_subset_size=3,
        # one edit per class: whichever classes the random segmenter shows, some edit has pixels to paint
        edits=tuple(MaskEdit(f"grow_c{k}", grow=k, into=tuple(set(range(5)) - {k})) for k in range(5)),
    )
    stages: list[str] = []
    report = evaluate_bundle(bundle, config, heldout=tiny_heldout, progress=lambda s, done, total: stages.append(s))
    json.dumps(report, allow_nan=False)
    assert report["extractor"].startswith("tiny@")  # the bundle's own conv perceptual network
    assert set(report["vectors"]) == {"grow"} and set(report["vectors_skipped"]) == {"untargeted"}
    assert report["vectors"]["grow"]["target_class"] == [1]
    assert report["inversion"]["images"] == 3 and stages.count("inversion") == 3 and stages.count("edits") == 5
    assert set(report["passed"]) == set(report["targets"])
    assert report["config"]["edits"] == [f"grow_c{k}" for k in range(5)]
    assert sum(e["images"] for e in report["edits"].values()) >= 1
    assert all(0 <= e["reached_mean"] <= 1 for e in report["edits"].values() if e["images"])
    ablation = report["inversion_ablation"]
    assert ablation["mse_only"]["images"] == ablation["with_perceptual"]["images"] == 2
    assert ablation["mse_only"]["psnr_mean"] != ablation["with_perceptual"]["psnr_mean"]  # the two losses differ
