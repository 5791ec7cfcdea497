from __future__ import annotations

import dataclasses
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine import editing, inversion
from engine.bundle import Bundle
from engine.editing import _SegmentationLoss, add_vectors, apply_vectors, optimize_edit, refine
from engine.errors import CancelledError, InputError
from engine.images import dilate
from engine.inversion import invert
from engine.optim import WARMUP_STEPS, optimize_w
from engine.params import EditParams
from engine.perceptual import ConvPerceptual, ConvPerceptualConfig, PerceptualLoss
from engine.vectors import EditingVector
from tests.engine.emulated_graph import DEVICE_READS, EmulatedGraph, EmulatedGraphs


@pytest.fixture
def perceptual() -> PerceptualLoss:
    torch.manual_seed(0)
    return ConvPerceptual(ConvPerceptualConfig(widths=(8, 16))).freeze()


def _edit_mask(bundle: Bundle, w: torch.Tensor) -> torch.Tensor:
    """The current segmentation with a 6x6 block painted to a class it does not hold there (never 4)."""
    labels = apply_vectors(bundle, w, [(torch.zeros_like(w[0]), 0.0)]).rendering.labels[0].clone()
    block = labels[8:14, 10:16]
    new = int((block.flatten().mode().values + 1) % 4)
    labels[8:14, 10:16] = new
    return labels


def test_gradients_reach_every_w_plus_row(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    g = tiny_bundle.generator
    w = g.sample_w_plus(1, seed=0)
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[10:20, 5:25] = True
    targets = torch.randint(0, 5, (32, 32), generator=torch.Generator().manual_seed(0))
    loss = _SegmentationLoss(
        tiny_bundle,
        perceptual,
        g.synthesis(w).image,
        region,
        targets,
        EditParams(),
    )
    w_var = (w + 0.3 * torch.randn_like(w)).requires_grad_(True)
    total, _, _ = loss(w_var)
    total.backward()
    assert w_var.grad is not None
    assert bool((w_var.grad.abs().sum(-1) > 0).all())


def test_pixels_inside_the_region_do_not_affect_the_image_term(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    g = tiny_bundle.generator
    w = g.sample_w_plus(1, seed=0)
    reference = g.synthesis(w).image
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[8:20, 6:22] = True
    targets = torch.zeros(32, 32, dtype=torch.long)

    def rgb(ref: torch.Tensor) -> float:
        loss = _SegmentationLoss(
            tiny_bundle,
            perceptual,
            ref,
            region,
            targets,
            EditParams(),
        )
        return float(loss(g.sample_w_plus(1, seed=9))[2]["rgb"])

    inside, outside = reference.clone(), reference.clone()
    inside[:, :, region] = torch.rand_like(inside[:, :, region]) * 2 - 1
    outside[:, :, ~region] = torch.rand_like(outside[:, :, ~region]) * 2 - 1
    assert rgb(inside) == pytest.approx(rgb(reference), abs=1e-6)
    assert rgb(outside) != pytest.approx(rgb(reference), abs=1e-3)


def test_optimize_edit_returns_a_vector_and_the_best_step(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    w = tiny_bundle.generator.sample_w_plus(1, seed=2)
    mask = _edit_mask(tiny_bundle, w)
    seen: list[tuple[int, int]] = []
    result = optimize_edit(
        tiny_bundle,
        w,
        mask,
        [0, 1, 2, 3],  # a class group: a region wide enough that random weights lower the loss in 6 steps
        perceptual=perceptual,
        params={"steps": 6},
        progress=lambda step, total, losses: seen.append((step, total)),
    )
    assert seen == [(i, 6) for i in range(7)]
    totals = [h["total"] for h in result.history]
    assert len(totals) == 7 and totals[result.best_step] == min(totals[1:])
    assert result.best_step >= 1 and min(totals) < totals[0]
    torch.testing.assert_close(result.w_plus[0], w[0] + result.vector.delta)
    assert result.vector.source_latent is not None and torch.equal(result.vector.source_latent, w[0])
    assert result.vector.classes and result.region.any()
    # the edited render is the render of the returned latent
    again = apply_vectors(tiny_bundle, w, [(result.vector, 1.0)])
    torch.testing.assert_close(again.rendering.image, result.rendering.image, rtol=1e-4, atol=1e-4)
    # deterministic
    twice = optimize_edit(tiny_bundle, w, mask, [0, 1, 2, 3], perceptual=perceptual, params={"steps": 6})
    assert torch.equal(twice.w_plus, result.w_plus)


def test_the_best_iterate_is_a_copy_not_the_last_one() -> None:
    target = torch.zeros(1, 2, 3)
    iterates: list[torch.Tensor] = []

    def loss_fn(w: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        iterates.append(w.detach().clone())
        loss = (w - target).square().sum()
        return loss, {"total": loss.detach()}

    # a learning rate far too large: Adam overshoots, so an early iterate is the best one
    result = optimize_w(torch.full((1, 2, 3), 0.05), loss_fn, steps=8, lr=lambda k: 1.0)
    totals = [h["total"] for h in result.history]
    assert result.best_step == totals.index(min(totals)) and result.best_step < 8
    assert torch.equal(result.w_plus, iterates[result.best_step])
    assert not torch.equal(result.w_plus, iterates[-1])


def test_an_edit_never_returns_the_unedited_start(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    # An image term so heavy that every step costs more than the start: the edit must still move.
    w = tiny_bundle.generator.sample_w_plus(1, seed=2)
    params = {"steps": 4, "rgb_weight": 1e6, "ce_weight": 1e-6}
    result = optimize_edit(tiny_bundle, w, _edit_mask(tiny_bundle, w), perceptual=perceptual, params=params)
    totals = [h["total"] for h in result.history]
    assert totals.index(min(totals)) == 0  # the trap: the start has the lowest total
    assert result.best_step == 1 + totals[1:].index(min(totals[1:]))
    assert float(result.vector.delta.abs().max()) > 0


def test_best_from_excludes_early_iterates_from_the_choice() -> None:
    def loss_fn(w: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = w.square().sum()  # minimised at the start: every Adam step moves away from 0... or not at all
        return loss, {"total": loss.detach()}

    start = torch.zeros(1, 1, 2)
    assert optimize_w(start, loss_fn, steps=3, lr=lambda k: 0.1).best_step == 0
    assert optimize_w(start, loss_fn, steps=3, lr=lambda k: 0.1, best_from=2).best_step >= 2
    assert optimize_w(start, loss_fn, steps=0, lr=lambda k: 0.1, best_from=1).best_step == 0


def test_a_stop_request_ends_the_loop_within_one_step(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    w = tiny_bundle.generator.sample_w_plus(1, seed=2)
    steps: list[int] = []
    with pytest.raises(CancelledError):
        optimize_edit(
            tiny_bundle,
            w,
            _edit_mask(tiny_bundle, w),
            perceptual=perceptual,
            params={"steps": 20},
            progress=lambda step, total, losses: steps.append(step),
            should_stop=lambda: len(steps) >= 3,
        )
    assert steps == [0, 1, 2]


class _DeviceReads(TorchDispatchMode):
    """Counts the operations that make the host wait for the device (a value read back, a data-dependent
    shape), except Adam's step counter, a CPU tensor that `torch.optim` reads whatever the device."""

    READS = DEVICE_READS

    def __init__(self) -> None:
        super().__init__()
        self.count: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = str(func)
        if name.startswith(self.READS) and not any("torch/optim/" in f.filename for f in traceback.extract_stack()):
            self.count[name] += 1
        return func(*args, **(kwargs or {}))


def test_the_loops_read_the_device_once_per_step(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    # A read in mid-step makes the host wait for a GPU, which then idles while the host queues the rest of
    # the step. Each loop's updates read nothing but the packed logged terms (`tolist`, no dispatch).
    w = tiny_bundle.generator.sample_w_plus(1, seed=2)
    mask = _edit_mask(tiny_bundle, w)
    present = [int(c) for c in mask.unique()[:2]]
    vec = EditingVector(delta=tiny_bundle.vectors["grow"] * 0.3, model="tiny", classes=present)
    target = tiny_bundle.generator.synthesis(w).image.clamp(-1, 1)
    loops: dict[str, Callable[[int], object]] = {
        "edit": lambda n: optimize_edit(tiny_bundle, w, mask, perceptual=perceptual, params={"steps": n}),
        "refine": lambda n: refine(tiny_bundle, w, [(vec, 1.0)], steps=n, perceptual=perceptual),
        "invert": lambda n: invert(tiny_bundle, target, perceptual=perceptual, params={"steps": n}),
    }
    for name, run in loops.items():
        counts = []
        for steps in (1, 4):
            reads = _DeviceReads()
            with reads:
                run(steps)
            counts.append(reads.count)
        assert counts[0], f"{name}: the set-up reads values (a region, its bounds): the probe must see them"
        assert counts[1] == counts[0], f"{name}: reads per update: {counts[1] - counts[0]}"


def test_the_loops_replay_as_cuda_graphs(
    tiny_bundle: Bundle, perceptual: PerceptualLoss, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `cuda_graphs` captures one update and replays it: on the CPU an emulation holds each loop to what a
    # capture needs (the same operations at every update, no device read, no host data) and to the
    # plumbing (warm-ups, then one capture, a replay at every later update), and the results must equal
    # the eager loop's.
    graphs = EmulatedGraphs()

    def emulated(device: torch.device, enabled: bool) -> EmulatedGraph | None:
        return graphs() if enabled else None

    monkeypatch.setattr(editing, "loop_graph", emulated)
    monkeypatch.setattr(inversion, "loop_graph", emulated)
    w = tiny_bundle.generator.sample_w_plus(1, seed=2)
    mask = _edit_mask(tiny_bundle, w)
    present = [int(c) for c in mask.unique()[:2]]
    vec = EditingVector(delta=tiny_bundle.vectors["grow"] * 0.3, model="tiny", classes=present)
    target = tiny_bundle.generator.synthesis(w).image.clamp(-1, 1)
    steps = WARMUP_STEPS + 3
    loops: dict[str, Callable[[bool], Any]] = {
        "edit": lambda on: optimize_edit(
            tiny_bundle, w, mask, perceptual=perceptual, params={"steps": steps, "cuda_graphs": on}
        ),
        "refine": lambda on: refine(
            tiny_bundle, w, [(vec, 1.0)], steps=steps, perceptual=perceptual, params={"cuda_graphs": on}
        ),
        "invert": lambda on: invert(
            tiny_bundle, target, perceptual=perceptual, params={"steps": steps, "cuda_graphs": on}
        ),
    }
    for name, run in loops.items():
        eager, graphed = run(False), run(True)
        graph = graphs[-1]
        assert (graph.warmups, graph.replays) == (WARMUP_STEPS, steps - WARMUP_STEPS), name
        assert graphed.history == eager.history, name
        assert torch.equal(graphed.w_plus, eager.w_plus), name


def test_cuda_graphs_need_a_cuda_device(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    w = tiny_bundle.generator.sample_w_plus(1, seed=2)
    with pytest.raises(InputError, match="cuda_graphs needs a CUDA device, not cpu"):
        optimize_edit(tiny_bundle, w, _edit_mask(tiny_bundle, w), perceptual=perceptual, params={"cuda_graphs": True})


def test_zero_refinement_steps_equal_apply_vectors(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    w = tiny_bundle.generator.sample_w_plus(2, seed=1)
    vec = EditingVector(delta=tiny_bundle.vectors["grow"], model="tiny", classes=[1, 2])
    plain = apply_vectors(tiny_bundle, w, [(vec, 0.7)])
    refined = refine(tiny_bundle, w, [(vec, 0.7)], steps=0, perceptual=perceptual)
    assert torch.equal(plain.w_plus, refined.w_plus)
    assert torch.equal(plain.rendering.image, refined.rendering.image)
    assert torch.equal(plain.rendering.labels, refined.rendering.labels)


def test_refinement_moves_from_the_vector_result(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    w = tiny_bundle.generator.sample_w_plus(1, seed=1)
    labels = apply_vectors(tiny_bundle, w, [(torch.zeros(8, 32), 0.0)]).rendering.labels
    present = [int(c) for c in labels.unique()[:2]]
    vec = EditingVector(delta=tiny_bundle.vectors["grow"] * 0.3, model="tiny", classes=present)
    result = refine(tiny_bundle, w, [(vec, 1.0)], steps=4, perceptual=perceptual)
    assert len(result.history) == 5
    totals = [h["total"] for h in result.history]
    assert totals[result.best_step] == min(totals)
    assert result.w_plus.shape == (1, 8, 32)


def test_vectors_add_linearly_in_one_pass(tiny_bundle: Bundle) -> None:
    gen = torch.Generator().manual_seed(3)
    v1, v2 = torch.randn(8, 32, generator=gen), torch.randn(8, 32, generator=gen)
    w = tiny_bundle.generator.sample_w_plus(3, seed=4)
    a, b = 0.8, -1.5
    two = apply_vectors(tiny_bundle, w, [(v1, a), (v2, b)])
    one = apply_vectors(tiny_bundle, w, [(a * v1 + b * v2, 1.0)])
    torch.testing.assert_close(two.w_plus, one.w_plus)
    torch.testing.assert_close(two.rendering.image, one.rendering.image, rtol=1e-5, atol=1e-5)
    assert two.rendering.image.shape[0] == 3  # batched over latents


def test_vectors_add_on_the_device_asked_for_not_only_the_models(tiny_bundle: Bundle) -> None:
    # The gateway's event loop adds on the CPU while the models may live on a GPU ("meta" stands in for it).
    elsewhere = dataclasses.replace(tiny_bundle, device=torch.device("meta"))
    w = tiny_bundle.generator.sample_w_plus(1, seed=4)
    vector = EditingVector(torch.randn(8, 32, generator=torch.Generator().manual_seed(3)), tiny_bundle.spec.name, [1])
    on_cpu = add_vectors(elsewhere, w, [(vector, 0.5)], device=torch.device("cpu"))
    assert on_cpu.device.type == "cpu"
    torch.testing.assert_close(on_cpu, w + 0.5 * vector.delta)
    assert add_vectors(elsewhere, w, [(vector, 0.5)]).device.type == "meta"  # by default on the models' device


def test_adding_vectors_names_what_is_not_finite(tiny_bundle: Bundle) -> None:
    # One finiteness check of the sum on the way that succeeds; every culprit is still named when it fails.
    w = tiny_bundle.generator.sample_w_plus(1, seed=4)
    vector = torch.randn(8, 32, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(add_vectors(tiny_bundle, w, [(vector, -1.5)]), w - 1.5 * vector)
    bad_latent = w.clone()
    bad_latent[0, 2, 5] = float("nan")
    with pytest.raises(InputError, match="latent contains NaN"):
        add_vectors(tiny_bundle, bad_latent, [(vector, 1.0)])
    infinite = vector.clone()
    infinite[1, 1] = float("inf")
    for scale in (1.0, 0.0):  # at scale 0 too: 0 * inf is NaN, not 0
        with pytest.raises(InputError, match="vector must be a finite"):
            add_vectors(tiny_bundle, w, [(vector, 1.0), (infinite, scale)])
    record = EditingVector(infinite, tiny_bundle.spec.name, [1])
    with pytest.raises(InputError, match="vector must be a finite"):
        add_vectors(tiny_bundle, w, [(record, 0.5)])
    huge = torch.full((8, 32), 3e38)
    with pytest.raises(InputError, match="exceeds float32's range"):
        add_vectors(tiny_bundle, w, [(huge, 2.0)])
    with pytest.raises(InputError, match="latent contains NaN"):  # on a device without values too
        add_vectors(dataclasses.replace(tiny_bundle, device=torch.device("meta")), bad_latent, [(vector, 1.0)])


def test_bad_edits_are_refused(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    w = tiny_bundle.generator.sample_w_plus(1, seed=2)
    for member in tiny_bundle.segmenter.classifiers():  # class 4 can no longer win anywhere
        member.layers[-1].bias.data[4] = -1e4
    current = apply_vectors(tiny_bundle, w, [(torch.zeros(8, 32), 0.0)]).rendering.labels[0]
    with pytest.raises(InputError, match="nothing to edit"):
        optimize_edit(tiny_bundle, w, current, perceptual=perceptual)
    edited = _edit_mask(tiny_bundle, w)
    assert not bool((edited == 4).any())
    with pytest.raises(InputError, match="no pixel"):
        optimize_edit(tiny_bundle, w, edited, [4], perceptual=perceptual)
    with pytest.raises(InputError, match="unknown region"):
        optimize_edit(tiny_bundle, w, edited, "nope", perceptual=perceptual)
    with pytest.raises(InputError, match="this model edits"):
        optimize_edit(tiny_bundle, w, edited[:-1], perceptual=perceptual)
    with pytest.raises(InputError, match="outside"):
        optimize_edit(tiny_bundle, w, edited + 10, perceptual=perceptual)
    with pytest.raises(InputError, match="NaN"):
        optimize_edit(tiny_bundle, torch.full_like(w, float("nan")), edited, perceptual=perceptual)
    with pytest.raises(InputError, match="unknown EditParams keys"):
        optimize_edit(tiny_bundle, w, edited, perceptual=perceptual, params={"stpes": 3})
    with pytest.raises(InputError, match="steps must be"):
        optimize_edit(tiny_bundle, w, edited, perceptual=perceptual, params={"steps": -1})
    with pytest.raises(InputError, match="class groups"):
        refine(tiny_bundle, w, [(torch.zeros(8, 32), 1.0)], steps=2, perceptual=perceptual)
    with pytest.raises(InputError, match="scale"):
        apply_vectors(tiny_bundle, w, [(torch.zeros(8, 32), float("inf"))])
    with pytest.raises(InputError, match="vector must be"):
        apply_vectors(tiny_bundle, w, [(torch.zeros(7, 32), 1.0)])
    huge = EditingVector(torch.full((8, 32), 3e38), tiny_bundle.spec.name, [1])  # finite, as is its scale
    assert huge.metadata()["norm"] > 3e38  # reported, not inf (an overflowing float32 norm)
    for call in (
        lambda: add_vectors(tiny_bundle, w, [(huge, 2.0)]),
        lambda: refine(tiny_bundle, w, [(huge, 2.0)], steps=2, perceptual=perceptual),
    ):
        with pytest.raises(InputError, match="float32's range"):
            call()


def test_region_dilation_matches_repeated_3x3_dilation() -> None:
    mask = torch.zeros(20, 20, dtype=torch.bool)
    mask[5, 5] = mask[12, 3] = mask[19, 19] = True
    grown = mask
    for _ in range(3):
        grown = torch.nn.functional.max_pool2d(grown[None, None].float(), 3, 1, 1)[0, 0] > 0
    assert torch.equal(dilate(mask, 3), grown)
    assert torch.equal(dilate(mask, 0), mask)


def test_a_painted_region_is_the_brushed_pixels_dilated(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    w = tiny_bundle.generator.sample_w_plus(1, seed=2)
    mask = _edit_mask(tiny_bundle, w)
    current = apply_vectors(tiny_bundle, w, [(torch.zeros(8, 32), 0.0)]).rendering.labels[0]
    painted = torch.zeros_like(mask, dtype=torch.bool)
    painted[8:14, 10:16] = True  # the block _edit_mask repainted: every changed pixel is brushed
    params = {"steps": 2}
    brushed = optimize_edit(tiny_bundle, w, mask, perceptual=perceptual, params=params, painted=painted)
    radius = EditParams.resolve(tiny_bundle.spec.defaults.get("edit"), params).roi_dilation
    assert torch.equal(brushed.region, dilate(painted, radius))  # the official tool's region
    assert set(brushed.vector.classes) == set(current[painted].tolist()) | set(mask[painted].tolist())
    # no strokes given: the pixels the edit changes stand for them
    unbrushed = optimize_edit(tiny_bundle, w, mask, perceptual=perceptual, params=params)
    assert torch.equal(unbrushed.region, dilate(mask != current, radius))
    assert unbrushed.vector.classes == sorted(set(current[mask != current].tolist()) | set(mask[painted].tolist()))
    # a class group named without strokes: every pixel of its classes, before or after (refinement's rule)
    groups = [0, 1, 2, 3]
    by_class = optimize_edit(tiny_bundle, w, mask, groups, perceptual=perceptual, params=params)
    in_classes = torch.isin(current, torch.tensor(groups)) | torch.isin(mask, torch.tensor(groups))
    assert torch.equal(by_class.region, dilate(in_classes, radius))
    assert int(by_class.region.sum()) > int(brushed.region.sum())
    # with strokes too, the group names the vector's classes and the loss region stays the brushed one
    named = optimize_edit(tiny_bundle, w, mask, groups, perceptual=perceptual, params=params, painted=painted)
    assert torch.equal(named.region, brushed.region) and named.vector.classes == groups


def test_painted_regions_that_cannot_hold_the_edit_are_refused(tiny_bundle: Bundle, perceptual: PerceptualLoss) -> None:
    w = tiny_bundle.generator.sample_w_plus(1, seed=2)
    mask = _edit_mask(tiny_bundle, w)
    part = torch.zeros_like(mask, dtype=torch.bool)
    part[8:10, 10:12] = True  # a corner of the repainted block: the rest lies beyond the dilation
    cases = [
        (torch.zeros_like(part), "empty"),
        (part[:-1], "painted region is"),
        (part, "outside the painted region"),
    ]
    for painted, message in cases:
        with pytest.raises(InputError, match=message):
            optimize_edit(tiny_bundle, w, mask, perceptual=perceptual, params={"steps": 1}, painted=painted)
