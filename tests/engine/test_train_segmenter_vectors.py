"""Segmentation-branch training and named-vector learning (tiny models, seconds)."""

from __future__ import annotations

import argparse
from typing import Any, cast

import pytest
import torch

from engine.bundle import Bundle
from engine.editing import EditProblem, prepare_edit
from engine.errors import InputError
from engine.params import EditParams
from engine.perceptual import ConvPerceptual, ConvPerceptualConfig
from engine.rendering import render
from engine.segmenter import SegmenterConfig
from engine.train import vectors as V
from engine.train.demo_bundle import mean_iou
from engine.train.segmenter import SegmenterTrainConfig, aligned_pixels, pixel_features, train_ensemble
from service.cli import build_parser


def test_pixel_features_are_the_upsampled_stack_row_by_row(tiny_bundle: Bundle) -> None:
    w = tiny_bundle.generator.sample_w_plus(3, seed=0)
    feats = pixel_features(tiny_bundle.generator, w, chunk=2)
    size = tiny_bundle.generator.config.size
    assert feats.shape == (3 * size * size, tiny_bundle.spec.segmenter.feature_dim)
    out = tiny_bundle.generator.synthesis(w[1:2], return_features=True)
    assert out.features is not None
    last = out.features[-1][0, :, 5, 7]  # the full-resolution map needs no interpolation
    row = feats[size * size + 5 * size + 7, -last.numel() :]
    torch.testing.assert_close(row, last)


def test_the_ensemble_learns_labels_that_the_features_determine() -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(4000, 12, generator=gen)
    labels = (features[:, 0] > 0).long() + 2 * (features[:, 1] > 0.5).long()  # 4 classes, a function of x
    config = SegmenterConfig(feature_channels=(8, 4), num_classes=4, out_size=8, num_models=2)
    segmenter, stats = train_ensemble(
        features, labels, config, SegmenterTrainConfig(num_models=2, epochs=5, batch_size=64)
    )
    assert [s["member"] for s in stats] == [0, 1]
    assert all(s["train_accuracy"] > 0.9 for s in stats)
    shuffled = labels[torch.randperm(labels.numel(), generator=gen)]  # no relation to the features
    _, noise = train_ensemble(features, shuffled, config, SegmenterTrainConfig(num_models=1, epochs=5, batch_size=64))
    assert noise[0]["train_accuracy"] < min(s["train_accuracy"] for s in stats) - 0.2
    assert not any(p.requires_grad for p in segmenter.parameters())
    # No epoch, or no pixel left (a pixel-error bound none meets): a clear refusal, not a crash mid-way.
    with pytest.raises(InputError, match="epochs must be >= 1"):
        train_ensemble(features, labels, config, SegmenterTrainConfig(num_models=1, epochs=0))
    with pytest.raises(InputError, match="0 training pixels"):
        train_ensemble(features[:0], labels[:0], config, SegmenterTrainConfig(num_models=1))


def test_mean_iou_is_one_for_equal_maps_and_counts_each_present_class() -> None:
    a = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 2]])
    assert mean_iou(a, a, 3) == 1.0
    b = a.clone()
    b[0, 0] = 1  # class 0: 1/2, class 1: 2/3, class 2: 1
    assert abs(mean_iou(b, a, 3) - (0.5 + 2 / 3 + 1) / 3) < 1e-9


def face_labels() -> torch.Tensor:
    labels = torch.zeros(20, 20, dtype=torch.long)
    labels[3:17, 3:17] = V.SKIN
    labels[1:5, 3:17] = V.HAIR
    labels[9:15, 2:4] = V.HAIR  # hair beside the face, below the eyes
    labels[6, 6:8] = V.EYEBROWS
    labels[8:10, 6:8] = V.LEFT_EYE
    labels[8:10, 12:14] = V.RIGHT_EYE
    labels[14, 8:12] = V.MOUTH
    return labels


def test_mask_operations_only_touch_what_they_name() -> None:
    labels = face_labels()
    eyes = V.enlarge_eyes(labels)
    grown = (eyes != labels).nonzero()
    assert grown.shape[0] > 0 and bool((labels[eyes != labels] == V.SKIN).all())
    assert int((eyes == V.LEFT_EYE).sum()) > int((labels == V.LEFT_EYE).sum())
    assert bool((eyes[labels == V.EYEBROWS] == V.EYEBROWS).all())  # never over the eyebrows

    mouth = V.open_mouth(labels)
    cols = (mouth == V.MOUTH).nonzero()[:, 1]
    assert set(cols.tolist()) == set(range(8, 12)) and int((mouth == V.MOUTH).sum()) == 4 * 5

    smiling = V.smile(labels)
    assert set((smiling == V.MOUTH).nonzero()[:, 1].tolist()) == set(range(6, 14))  # 2 px wider each side
    assert int((smiling[13] == V.MOUTH).sum()) == 4  # corners lifted by a row
    assert bool((labels[smiling != labels] == V.SKIN).all())
    assert not bool((V.remove_eyebrows(labels) == V.EYEBROWS).any())
    short = V.shorter_hair(labels)
    assert not bool((short[8:] == V.HAIR).any()) and bool((short[:8] == labels[:8]).all())


def _relabel(labels: torch.Tensor) -> torch.Tensor:
    """A painted edit for the tiny model: a block of class 1."""
    out = labels.clone()
    out[8:14, 10:20] = 1
    return out


def test_a_learned_vector_is_the_mean_offset_of_its_sources(tiny_bundle: Bundle) -> None:
    perceptual = ConvPerceptual(ConvPerceptualConfig(widths=(4,))).eval().requires_grad_(False)
    latents = tiny_bundle.generator.sample_w_plus(2, seed=3)

    edit = V.NamedEdit(_relabel, "pair", (1,), 1, "test")
    before = [render(tiny_bundle, latents[i : i + 1]).labels[0] for i in range(2)]
    assert all(bool((_relabel(b) != b).any()) for b in before)
    found, stats = V.learn_vector(tiny_bundle, latents, edit, steps=3, perceptual=perceptual, log=lambda _: None)
    assert list(found) == ["mean"]  # no joint steps: no shared candidate
    delta = found["mean"]
    assert delta.shape == latents.shape[1:] and stats["sources"] == 2 and 0.0 <= stats["reached"] <= 1.0
    single, _ = V.learn_vector(tiny_bundle, latents[:1], edit, steps=3, perceptual=perceptual, log=lambda _: None)
    other, _ = V.learn_vector(tiny_bundle, latents[1:], edit, steps=3, perceptual=perceptual, log=lambda _: None)
    torch.testing.assert_close(delta, (single["mean"] + other["mean"]) / 2)


def test_the_shared_offset_minimises_the_mean_loss_of_all_problems() -> None:
    # Quadratic stand-ins for the edit losses: ||w0_i + delta - goal_i||^2, minimised by the mean of goal_i - w0_i.
    gen = torch.Generator().manual_seed(0)
    starts, goals = torch.randn(3, 1, 2, 4, generator=gen), torch.randn(3, 1, 2, 4, generator=gen)

    def problem(w0: torch.Tensor, goal: torch.Tensor) -> EditProblem:
        def terms(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
            return (w - goal).square().sum(), w, {}

        return EditProblem(w0=w0, terms=cast(Any, terms), roi=torch.ones(1, dtype=torch.bool), classes={1})

    problems = [problem(w0, goal) for w0, goal in zip(starts, goals, strict=True)]
    optimum = (goals - starts).mean(0)[0]
    start = torch.zeros(2, 4)
    shared, loss = V.fit_shared_offset(problems, start, steps=300, lr=0.05)
    torch.testing.assert_close(shared, optimum, atol=2e-3, rtol=0)
    floor = sum(float((s + optimum - g).square().sum()) for s, g in zip(starts, goals, strict=True)) / 3
    assert loss == pytest.approx(floor, rel=1e-3)
    unchanged, at_start = V.fit_shared_offset(problems, start, steps=0, lr=0.05)
    assert torch.equal(unchanged, start) and at_start > loss


def test_a_learned_vector_offers_the_mean_and_the_shared_offset(tiny_bundle: Bundle) -> None:
    perceptual = ConvPerceptual(ConvPerceptualConfig(widths=(4,))).eval().requires_grad_(False)
    latents = tiny_bundle.generator.sample_w_plus(3, seed=3)

    edit = V.NamedEdit(_relabel, "pair", (1,), 1, "test")
    tiny_bundle.spec.regions.setdefault("pair", [1])
    found, stats = V.learn_vector(tiny_bundle, latents, edit, steps=3, perceptual=perceptual, joint_steps=4)
    assert set(found) == {"mean", "shared"} and found["shared"].shape == found["mean"].shape
    assert stats["shared_offset_loss"] <= stats["mean_offset_loss"] and 0.0 <= stats["shared_reached"] <= 1.0
    params = EditParams.resolve(tiny_bundle.spec.defaults.get("edit"), {"steps": 3})
    problems = [
        prepare_edit(tiny_bundle, w[None], _relabel(render(tiny_bundle, w[None]).labels[0]), "pair",
                     perceptual=perceptual, params=params)
        for w in latents
    ]  # fmt: skip

    def mean_loss(delta: torch.Tensor) -> float:
        with torch.no_grad():
            return sum(float(p.terms(p.w0 + delta)[0]) for p in problems) / len(problems)

    # the stats are the mean losses of the two candidates over the same problems
    assert mean_loss(found["shared"]) == pytest.approx(stats["shared_offset_loss"], rel=1e-4)
    assert mean_loss(found["mean"]) == pytest.approx(stats["mean_offset_loss"], rel=1e-4)


def test_a_candidate_offset_wins_by_reaching_the_target_then_by_keeping_the_image() -> None:
    def cal(rate: float, psnr: float | None) -> V.Calibration:
        return V.Calibration(1.0, {"1": rate}, psnr)

    assert cal(1.0, 25.0).better_than(cal(0.9, 30.0), 0.95)  # only one reaches the target
    assert cal(0.96, 31.0).better_than(cal(1.0, 30.0), 0.95)  # both do: the image outside decides
    assert cal(0.9, 20.0).better_than(cal(0.8, 35.0), 0.95)  # neither: the more successful
    assert not cal(1.0, 30.0).better_than(cal(1.0, 30.0), 0.95)  # a tie keeps the first


def test_the_calibrated_scale_is_the_smallest_that_transfers(tiny_bundle: Bundle) -> None:
    latents = tiny_bundle.generator.sample_w_plus(6, seed=4)
    delta = tiny_bundle.vectors["grow"]
    tiny_bundle.spec.regions.setdefault("one", [1])
    for direction in (1, -1):
        edit = V.NamedEdit(lambda x: x, "one", (1,), direction, "test")
        c = V.calibrate_scale(tiny_bundle, delta, edit, latents)
        scale, tried = c.scale, c.success
        assert c.psnr_outside is None or c.psnr_outside > 0
        assert list(tried) == [f"{s:g}" for s in V.SCALES[: len(tried)]]
        assert scale in V.SCALES
        if tried[f"{scale:g}"] >= 0.9:  # stopped at the first scale that transfers
            assert list(tried)[-1] == f"{scale:g}" and all(v < 0.9 for v in list(tried.values())[:-1])
        else:  # none did: the best one, after trying them all
            assert len(tried) == len(V.SCALES) and tried[f"{scale:g}"] == max(tried.values())


def test_aligned_pixels_drop_what_the_embedding_does_not_reproduce(tiny_bundle: Bundle) -> None:
    g = tiny_bundle.generator
    w = g.sample_w_plus(2, seed=5)
    with torch.no_grad():
        images = g.synthesis(w).image.clamp(-1, 1)
    assert bool(aligned_pixels(g, w, images, 0.01).all())
    changed = images.clone()
    changed[1, :, 4:8, 10:20] = -changed[1, :, 4:8, 10:20]  # a patch the render does not show
    keep = aligned_pixels(g, w, changed, 0.01).reshape(2, g.config.size, g.config.size)
    big = (changed - images).abs().mean(1) * 0.5 > 0.01
    assert torch.equal(~keep, big) and bool(big[1, 4:8, 10:20].any()) and bool(keep[0].all())


def test_train_segmenter_reads_hidden_widths() -> None:
    def parse(*extra: str) -> argparse.Namespace:
        return build_parser().parse_args(["train", "segmenter", "--gan", "g", "--out", "o", *extra])

    assert parse().hidden is None and parse("--hidden", "64,32").hidden == (64, 32)
    assert parse().mirror is False and parse("--mirror").mirror is True
    for bad in ("64", "64,x", "0,32", "64,32,8"):
        with pytest.raises(SystemExit):
            parse("--hidden", bad)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "segmenter", "--gan", "g", "--out", "o", "--epochs", "0"],
        ["train", "segmenter", "--gan", "g", "--out", "o", "--max-pixel-error", "-1"],
        ["train", "vectors", "--bundle", "b", "--sources", "-1"],  # once read as a slice: "all but one"
        ["train", "vectors", "--bundle", "b", "--joint-steps", "-3"],
        ["train", "perceptual", "--out", "o", "--steps", "0"],
        ["render", "b", "o", "--truncation", "nan"],
        ["render", "b", "o", "--count", "0"],
        ["figure", "b", "o.png", "--zoom", "0"],
        ["bench", "--threads", "-1"],
        ["up", "--workers", "0"],
    ],
)
def test_numbers_out_of_range_are_refused_before_any_work(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2 and "must be a finite number" in capsys.readouterr().err
