"""Section `naive`: `engine.optimize_edit` against the official editing loop written plainly.

The baseline (`naive_optimize_edit`) is EDITGAN.md section 3d without any of the engine's tricks: every
step it builds the full-resolution feature stack [1, D, S, S] with `upsample_features` (6.3 GB at 512 px),
flattens it, takes the region's rows and runs every ensemble member on them, and computes the perceptual
loss of both images (nothing cached); the segmentation shown afterwards runs every member on every pixel
of the full stack (the official `run_seg`). Only the objective is shared with the engine: the bundle's
loss weights, learning rate, steps and interpolation mode, and the region and targets by the engine's rule
(`edit_region`). So the two loops measure the same loss at the start and end close to each other; the
section reports the speed-up as a ratio and both loss differences against their tolerances.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.context import Context
from bench.inputs import EditInput, default_steps, edit_input
from bench.results import SectionResult
from bench.timing import StepClock, ratio, timed
from engine import Bundle, EditParams, optimize_edit
from engine.images import dilate
from engine.optim import ProgressFn, encoder_term, masked, mse01
from engine.perceptual import PerceptualLoss
from engine.segmenter import Upsample, upsample_features

T = TypeVar("T")

# Relative differences of the total loss allowed between the two loops. At the first iterate (the same w)
# only float rounding separates them. Over the updates Adam amplifies rounding, by an amount that depends on
# the model and the edit (v0.2: 1.3e-4 after 40 steps; v0.7: 0.2-0.9 %, with the engine ahead or behind), so
# the final tolerance is the larger of FINAL_TOLERANCE and twice the engine's own spread when its start
# moves by one float32 ulp (`rounding_spread`, six starts): two exact implementations of the loop end that
# far apart.
START_TOLERANCE = 1e-5
FINAL_TOLERANCE = 1e-3
RANDOM_NUDGES = 4  # starts moved by one ulp per entry, up or down at random, besides all up and all down


@dataclass
class NaiveEdit:
    w_plus: Tensor  # [1, L, S] the final iterate (the official loop returns it)
    labels: Tensor  # [h, w] its segmentation over the content box
    history: list[dict[str, float]] = field(default_factory=list)  # logged terms of every iterate


def full_stack_bytes(bundle: Bundle) -> int:
    """Size of one float32 feature stack [1, D, S, S]: what the official loop builds every step."""
    return 4 * bundle.spec.generator.feature_dim * bundle.spec.resolution**2


def naive_segment(bundle: Bundle, w: Tensor, mode: Upsample = "bilinear") -> Tensor:
    """Official `run_seg`: full stack, every member on every pixel of the content box: labels [h, w]."""
    assert bundle.spec.geometry is not None
    top, left, h, wd = bundle.spec.geometry.box
    with torch.no_grad():
        features = bundle.generator.synthesis(w, return_features=True).features
        assert features is not None
        stack = upsample_features(features, bundle.spec.resolution, mode)[:, :, top : top + h, left : left + wd]
        rows = stack.reshape(stack.shape[1], -1).t()  # [h*w, D]
        logits = torch.stack([m(rows) for m in bundle.segmenter.models]).mean(0)
    return logits.argmax(-1).reshape(h, wd)


def naive_optimize_edit(
    bundle: Bundle,
    w0: Tensor,
    region: Tensor,
    targets: Tensor,
    *,
    params: EditParams,
    perceptual: PerceptualLoss,
    progress: ProgressFn | None = None,
) -> NaiveEdit:
    """The official optimisation edit: region [S, S] bool (dilated), targets [S, S] class ids."""
    p, size = params, bundle.spec.resolution
    keep = (~region).to(torch.float32)[None, None]
    pixels = region.reshape(-1)
    wanted = targets.reshape(-1)[pixels]
    with torch.no_grad():
        reference = masked(bundle.generator.synthesis(w0).image, keep)
    encoder = bundle.encoder if p.encoder_weight > 0 else None
    w = w0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([w], lr=p.lr)
    history: list[dict[str, float]] = []
    for step in range(p.steps + 1):  # steps updates; the last iterate is only measured
        last = step == p.steps
        with torch.set_grad_enabled(not last):
            out = bundle.generator.synthesis(w, return_features=True)
            assert out.features is not None
            stack = upsample_features(out.features, size, p.upsample)  # [1, D, S, S], every step
            rows = stack.reshape(stack.shape[1], -1).t()[pixels]  # [P, D]: the region's rows
            logits = torch.stack([m(rows) for m in bundle.segmenter.models]).mean(0)
            ce = F.cross_entropy(logits, wanted)
            x = masked(out.image, keep)
            lp = perceptual(x, reference).mean()  # both images' features, every step
            mse = mse01(x, reference).mean()
            enc = encoder_term(
                encoder, w, out.image, range_=p.encoder_input, batch_statistics=p.encoder_batch_statistics
            ).mean()
            rgb = p.lpips_weight * lp + p.mse_weight * mse
            total = p.rgb_weight * rgb + p.ce_weight * ce + p.encoder_weight * enc
        accuracy = (logits.argmax(-1) == wanted).float().mean()
        logs = _scalars(total=total, rgb=rgb, lpips=lp, mse=mse, ce=ce, region_accuracy=accuracy, encoder=enc)
        history.append(logs)
        if progress is not None:
            progress(step, p.steps, logs)
        if last:
            break
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    final = w.detach()
    return NaiveEdit(w_plus=final, labels=naive_segment(bundle, final), history=history)


def _scalars(**terms: Tensor) -> dict[str, float]:
    """Each term read as a float as soon as it is computed, as the official loop logs them."""
    return {k: float(v.detach()) for k, v in terms.items()}


def edit_region(
    bundle: Bundle, w0: Tensor, edited: Tensor, classes: list[int] | None, params: EditParams
) -> tuple[Tensor, Tensor]:
    """The region and targets on the canvas [S, S], by `optimize_edit`'s rules: with a class group named,
    every pixel whose class before (the displayed segmentation) or after the edit is in `classes`; without
    one (None), the pixels the edit changes. Dilated on the canvas, where it may reach past the content box;
    the targets are the edited labels, background outside the box."""
    mode = bundle.spec.defaults.get("segment", {}).get("upsample", "bilinear")
    before = naive_segment(bundle, w0, mode)
    if classes is None:
        inside = before != edited
    else:
        q = torch.tensor(classes, device=bundle.device)
        inside = torch.isin(before, q) | torch.isin(edited, q)
    return dilate(on_canvas(bundle, inside), params.roi_dilation), on_canvas(bundle, edited)


def on_canvas(bundle: Bundle, box_map: Tensor) -> Tensor:
    """A content-box map [h, w] placed on the canvas [S, S], zero (False) outside the box."""
    assert bundle.spec.geometry is not None
    top, left, h, w = bundle.spec.geometry.box
    out = torch.zeros((bundle.spec.resolution,) * 2, dtype=box_map.dtype, device=box_map.device)
    out[top : top + h, left : left + w] = box_map
    return out


def compare(bundle: Bundle, inputs: EditInput, *, steps: int, reps: int, perceptual: PerceptualLoss) -> dict[str, Any]:
    """Both loops `reps` times, alternating, on the same edit: speed-up and final-loss agreement."""
    params = EditParams.resolve(bundle.spec.defaults.get("edit"), {"steps": steps})
    mask = torch.from_numpy(inputs.mask.astype(np.int64)).to(bundle.device)
    times: dict[str, dict[str, list[float]]] = {k: {"step": [], "total": []} for k in ("engine", "naive")}
    for _ in range(reps):
        edit, step_s, total_s = _measured(
            partial(
                optimize_edit, bundle, inputs.w, mask, inputs.region, perceptual=perceptual, params={"steps": steps}
            )
        )
        times["engine"]["step"].append(step_s)
        times["engine"]["total"].append(total_s)
        named = edit.vector.classes if inputs.region is not None else None
        region, targets = edit_region(bundle, inputs.w, mask, named, params)
        naive, step_s, total_s = _measured(
            partial(naive_optimize_edit, bundle, inputs.w, region, targets, params=params, perceptual=perceptual)
        )
        times["naive"]["step"].append(step_s)
        times["naive"]["total"].append(total_s)
    step = {k: statistics.median(v["step"]) for k, v in times.items()}
    total = {k: statistics.median(v["total"]) for k, v in times.items()}
    final = {"engine": edit.history[-1], "naive": naive.history[-1]}
    start = _relative(edit.history[0]["total"], naive.history[0]["total"])
    difference = _relative(final["engine"]["total"], final["naive"]["total"])
    spread = rounding_spread(bundle, inputs, mask, final["engine"]["total"], steps=steps, perceptual=perceptual)
    tolerance = max(FINAL_TOLERANCE, 2 * spread)
    return {
        "steps": steps,
        "reps": reps,
        "region_pixels": int(region.sum()),
        "same_region": bool(torch.equal(_in_box(bundle, region), edit.region)),
        "full_stack_mib": round(full_stack_bytes(bundle) / 2**20, 1),
        "ms_per_step": {k: round(v * 1000, 2) for k, v in step.items()},
        "total_s": {k: round(v, 3) for k, v in total.items()},
        "speedup_per_step": ratio(step["naive"], step["engine"], 2),
        "speedup_total": ratio(total["naive"], total["engine"], 2),
        "final_loss": {k: {t: round(v[t], 6) for t in ("total", "ce", "region_accuracy")} for k, v in final.items()},
        "start_loss_relative_difference": float(f"{start:.3g}"),
        "start_tolerance": START_TOLERANCE,
        "final_loss_relative_difference": float(f"{difference:.3g}"),
        "rounding_spread": float(f"{spread:.3g}"),
        "final_tolerance": float(f"{tolerance:.3g}"),
        "engine_final_below_naive": final["engine"]["total"] <= final["naive"]["total"],
        "equal_quality": start <= START_TOLERANCE and difference <= tolerance,
        "final_labels_agreement": round(float((edit.rendering.labels[0] == naive.labels).float().mean()), 4),
    }


def rounding_spread(
    bundle: Bundle, inputs: EditInput, mask: Tensor, final: float, *, steps: int, perceptual: PerceptualLoss
) -> float:
    """The largest relative change of the engine's final total loss (`final`, from `inputs.w`) when its start
    moves by one float32 ulp: every entry up, every entry down, and `RANDOM_NUDGES` seeded mixes of the two;
    how far rounding alone carries the loop. Adam's first updates are close to the gradient's sign, so an
    entry whose gradient is near 0 flips with rounding: two draws (up, down) missed a third of the range
    (demo v0.7, 40 steps: eight starts ended 4.158-4.210, up and down 4.161 and 4.198)."""
    w = inputs.w
    up = torch.nextafter(w, torch.full_like(w, float("inf")))
    down = torch.nextafter(w, torch.full_like(w, float("-inf")))
    starts = [up, down]
    for seed in range(RANDOM_NUDGES):
        which = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed)) < 0.5
        starts.append(torch.where(which.to(w.device), up, down))
    out = 0.0
    for start in starts:
        moved = optimize_edit(bundle, start, mask, inputs.region, perceptual=perceptual, params={"steps": steps})
        out = max(out, _relative(moved.history[-1]["total"], final))
    return out


def _in_box(bundle: Bundle, canvas_map: Tensor) -> Tensor:
    assert bundle.spec.geometry is not None
    top, left, h, w = bundle.spec.geometry.box
    return canvas_map[top : top + h, left : left + w]


def _measured(call: Callable[..., T]) -> tuple[T, float, float]:
    """(result, seconds per update, seconds in total) of `call(progress=...)`."""
    clock = StepClock()
    result, seconds = timed(lambda: call(progress=clock))
    return result, clock.per_step, seconds


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def cell(result: dict[str, Any]) -> str:
    quality = "equal" if result["equal_quality"] else "NOT equal"
    return (
        f"{result['speedup_per_step']}x per step, {result['speedup_total']}x total ({result['steps']} steps); "
        f"final loss diff {result['final_loss_relative_difference']:.1e} (tol {result['final_tolerance']:.1e}: "
        f"one-ulp spread {result['rounding_spread']:.1e}), "
        f"start {result['start_loss_relative_difference']:.1e} (tol {result['start_tolerance']:.0e}): {quality}"
    )


def run(ctx: Context) -> SectionResult:
    bundle = ctx.bundle()
    steps = default_steps(bundle, ctx.quick)["optimize"]
    ctx.log(f"naive: optimize_edit vs the official loop, {steps} steps")
    reps = 1 if ctx.quick else 3
    result = compare(bundle, edit_input(bundle), steps=steps, reps=reps, perceptual=ctx.perceptual(bundle))
    return SectionResult(result, {"naive": cell(result)})
