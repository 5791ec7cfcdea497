"""Section `precision`: the optimisation loops in reduced precision (engine/precision.py) against float32.

Each mode (inversion, optimisation edit, refinement) runs with the model's default steps in float32 and in
bfloat16 autocast and, on GPUs from Ampere on, TF32 (elsewhere it is float32). bfloat16 runs where it is
emulated too (a GPU before Ampere, a CPU without AVX-512), to show what that costs. Speed: ms per update, as a
ratio to float32 in the same run. Quality is measured on what the loops return, rendered in float32 either
way: inversion PSNR, the share of the painted pixels the edit reached and the PSNR outside its region, the
refinement's PSNR outside that region. (The losses the loop logs are not compared: they are computed in the
reduced precision itself, and Adam's first, sign-like steps make two exact-enough runs take different
paths.) A precision has equal quality when every PSNR is within `PSNR_TOLERANCE_DB` of float32's and the
reached share within `REACHED_TOLERANCE`, or within twice float32's own spread when every input moves by
one float32 step (`rounding_spread`), where that is larger: how far rounding alone carries the loops.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from bench.context import Context
from bench.inputs import EditInput, canvas, default_steps, edit_input
from bench.results import SectionResult
from bench.timing import StepClock, ratio, relative, timed
from engine import Bundle, EditingVector, invert, optimize_edit, refine, render
from engine.evaluate import PSNR_CAP, psnr_outside
from engine.memory import peak_gib, reset_peak
from engine.perceptual import PerceptualLoss
from engine.precision import Precision, native_precisions

PSNR_TOLERANCE_DB = 0.5
REACHED_TOLERANCE = 0.05
MODES = ("invert", "optimize", "refine")


def precisions(device: torch.device) -> list[Precision]:
    """What to compare on `device`: float32 first (the reference), TF32 where it exists (elsewhere it is
    float32), and bfloat16 everywhere: where it is emulated (`engine.precision.native_precisions` says
    so, and workers refuse it) the figures show what that costs."""
    return ["float32", "tf32", "bfloat16"] if "tf32" in native_precisions(device) else ["float32", "bfloat16"]


def _psnr_outside(x: torch.Tensor, y: torch.Tensor, region: torch.Tensor) -> float:
    """`engine.evaluate.psnr_outside` of one rendered pair [1, 3, h, w]; a region covering everything leaves
    nothing outside to change, which counts as the cap."""
    value = psnr_outside(x[0], y[0], region)
    return PSNR_CAP if value is None else value


def run_modes(
    bundle: Bundle,
    inputs: EditInput,
    perceptual: PerceptualLoss,
    steps: dict[str, int],
    precision: Precision,
    vector: EditingVector | None = None,
    nudge: float | None = None,
) -> tuple[dict[str, Any], EditingVector]:
    """The three modes once in `precision`: ms per update, total s and quality (float32 renders). The
    refinement applies `vector` (default: the edit's own), so that every precision refines the same one.
    `nudge` (inf or -inf) moves every input value (the photo and the latent) one float32 step that way:
    how far rounding alone carries each loop."""
    out: dict[str, Any] = {}
    reset_peak(bundle.device)

    def measure(mode: str, call: Callable[[StepClock], Any]) -> Any:
        clock = StepClock()
        result, seconds = timed(lambda: call(clock))
        out[mode] = {
            "steps": steps[mode],
            "ms_per_step": round(clock.per_step * 1000, 2),
            "total_s": round(seconds, 3),
            "loss_start": float(f"{clock.first['total']:.8g}"),  # the total loss of the first and last iterates
            "loss_final": float(f"{clock.last['total']:.8g}"),
        }
        return result

    params = {"precision": precision}
    image = canvas(bundle, inputs.photo)
    if nudge is not None:
        image = torch.nextafter(image, torch.full_like(image, nudge))
        inputs = dataclasses.replace(inputs, w=torch.nextafter(inputs.w, torch.full_like(inputs.w, nudge)))
    mask = torch.from_numpy(inputs.mask.astype("int64")).to(bundle.device)
    painted = mask.to(torch.long)
    before = render(bundle, inputs.w)
    changed = painted != before.labels[0]

    def inversion(clock: StepClock) -> Any:
        p = params | {"steps": steps["invert"]}
        return invert(bundle, image, perceptual=perceptual, params=p, progress=clock)

    def edit(clock: StepClock) -> Any:
        p = params | {"steps": steps["optimize"]}
        return optimize_edit(bundle, inputs.w, mask, inputs.region, perceptual=perceptual, params=p, progress=clock)

    out_inv = measure("invert", inversion)
    out["invert"]["psnr_db"] = round(out_inv.psnr, 3)
    edited = measure("optimize", edit)
    labels = edited.rendering.labels[0]
    reached = float((labels[changed] == painted[changed]).float().mean()) if bool(changed.any()) else 1.0
    out["optimize"] |= {
        "reached": round(reached, 4),
        "psnr_outside_db": round(_psnr_outside(edited.rendering.image, before.image, edited.region), 3),
    }
    vector = vector or edited.vector

    def refinement(clock: StepClock) -> Any:
        terms = [(vector, 1.0)]
        return refine(bundle, inputs.w, terms, steps["refine"], perceptual=perceptual, params=params, progress=clock)

    refined = measure("refine", refinement)
    out["refine"]["psnr_outside_db"] = round(_psnr_outside(refined.rendering.image, before.image, edited.region), 3)
    if (peak := peak_gib(bundle.device)) is not None:
        out["peak_memory_gib"] = peak
    return out, vector


def _psnrs(run: dict[str, Any]) -> dict[str, float]:
    """The PSNR each mode is judged by: the inversion's against the photo, the others' outside the region."""
    return {
        "invert": run["invert"]["psnr_db"],
        "optimize": run["optimize"]["psnr_outside_db"],
        "refine": run["refine"]["psnr_outside_db"],
    }


def rounding_spread(
    bundle: Bundle,
    inputs: EditInput,
    perceptual: PerceptualLoss,
    steps: dict[str, int],
    reference: dict[str, Any],
    vector: EditingVector,
) -> dict[str, Any]:
    """How far rounding alone carries float32's loops from `reference` (a `run_modes` of the same inputs):
    the three modes again with every input one float32 step up, then down; per figure the largest change
    (final total loss: relative; PSNR: dB; reached: share). Adam amplifies rounding over the updates, and
    on the demo model a 300-step inversion ends 43 % apart in loss and 1.5 dB in PSNR this way, so a fixed
    tolerance would judge rounding rather than the arithmetic compared."""
    spread: dict[str, Any] = {"loss": dict.fromkeys(MODES, 0.0), "psnr_db": dict.fromkeys(MODES, 0.0), "reached": 0.0}
    for toward in (float("inf"), float("-inf")):
        moved, _ = run_modes(bundle, inputs, perceptual, steps, "float32", vector, nudge=toward)
        for m in MODES:
            loss = relative(moved[m]["loss_final"], reference[m]["loss_final"])
            spread["loss"][m] = max(spread["loss"][m], loss)
            spread["psnr_db"][m] = max(spread["psnr_db"][m], round(abs(_psnrs(moved)[m] - _psnrs(reference)[m]), 3))
        reached = round(abs(moved["optimize"]["reached"] - reference["optimize"]["reached"]), 4)
        spread["reached"] = max(spread["reached"], reached)
    return spread


def compare(reference: dict[str, Any], other: dict[str, Any], spread: dict[str, Any]) -> dict[str, Any]:
    """`other`'s speed-up per update and quality differences against `reference` (float32), each within
    the larger of its fixed tolerance and twice float32's own `rounding_spread`."""
    speedup = {m: ratio(reference[m]["ms_per_step"], other[m]["ms_per_step"]) for m in MODES}
    psnr_diffs = {m: round(_psnrs(other)[m] - _psnrs(reference)[m], 3) for m in MODES}
    reached_diff = round(other["optimize"]["reached"] - reference["optimize"]["reached"], 4)
    psnr_tol = {m: round(max(PSNR_TOLERANCE_DB, 2 * spread["psnr_db"][m]), 3) for m in MODES}
    reached_tol = round(max(REACHED_TOLERANCE, 2 * spread["reached"]), 4)
    equal = all(abs(psnr_diffs[m]) <= psnr_tol[m] for m in MODES) and abs(reached_diff) <= reached_tol
    return {
        "speedup_per_step": speedup,
        "psnr_difference_db": psnr_diffs,
        "psnr_tolerance_db": psnr_tol,
        "reached_difference": reached_diff,
        "reached_tolerance": reached_tol,
        "equal_quality": equal,
    }


def compare_precisions(
    bundle: Bundle, inputs: EditInput, perceptual: PerceptualLoss, steps: dict[str, int], device: torch.device
) -> dict[str, Any]:
    """Every precision of the device against float32, on the same inputs and the same refined vector."""
    runs: dict[str, Any] = {}
    vector: EditingVector | None = None
    for p in precisions(device):
        runs[p], vector = run_modes(bundle, inputs, perceptual, steps, p, vector)
    reference = runs["float32"]
    assert vector is not None
    spread = rounding_spread(bundle, inputs, perceptual, steps, reference, vector)
    return {
        "tolerances": {"psnr_db": PSNR_TOLERANCE_DB, "reached": REACHED_TOLERANCE},
        "rounding_spread": spread,
        "runs": runs,
        "against_float32": {p: compare(reference, r, spread) for p, r in runs.items() if p != "float32"},
    }


def cell(result: dict[str, Any]) -> str:
    """The RESULTS.md cell: per precision, the per-update speed-ups and the quality verdict."""
    parts = []
    for p, c in result["against_float32"].items():
        s = c["speedup_per_step"]
        worst = max(MODES, key=lambda m: abs(c["psnr_difference_db"][m]) / c["psnr_tolerance_db"][m])
        verdict = "equal quality" if c["equal_quality"] else "quality differs"
        parts.append(
            f"{p}: invert {s['invert']}x, optimize {s['optimize']}x, refine {s['refine']}x per step; "
            f"PSNR {c['psnr_difference_db'][worst]:+.2f} dB ({worst}, tol {c['psnr_tolerance_db'][worst]:.2f}), "
            f"reached {c['reached_difference']:+.3f} (tol {c['reached_tolerance']:.3f}): {verdict}"
        )
    return "; ".join(parts)


def run(ctx: Context) -> SectionResult:
    bundle = ctx.bundle()
    steps = default_steps(bundle, ctx.quick)
    ctx.log(f"precision: {', '.join(precisions(ctx.device))} on {ctx.device}, steps {steps}")
    result = compare_precisions(bundle, edit_input(bundle), ctx.perceptual(bundle), steps, ctx.device)
    result["steps"] = steps
    return SectionResult(result, {"precision": cell(result)})
