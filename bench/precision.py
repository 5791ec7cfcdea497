"""Section `precision`: the optimisation loops in reduced precision (engine/precision.py) against float32.

Each mode (inversion, optimisation edit, refinement) runs with the model's default steps in float32 and in
every other precision the device offers (`engine.precision.native_precisions`): bfloat16 autocast on CPUs
and on GPUs from Ampere on, TF32 on those GPUs only (elsewhere it is float32). Speed: ms per update, as a
ratio to float32 in the same run. Quality is measured on what the loops return, rendered in float32 either
way: inversion PSNR, the share of the painted pixels the edit reached and the PSNR outside its region, the
refinement's PSNR outside that region. (The losses the loop logs are not compared: they are computed in the
reduced precision itself, and Adam's first, sign-like steps make two exact-enough runs take different
paths.) A precision has equal quality when every PSNR is within `PSNR_TOLERANCE_DB` of float32's and the
reached share within `REACHED_TOLERANCE`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bench.context import Context
from bench.inputs import EditInput, canvas, default_steps, edit_input
from bench.results import SectionResult
from bench.timing import StepClock, ratio, timed
from engine import Bundle, EditingVector, invert, optimize_edit, refine, render
from engine.evaluate import PSNR_CAP, psnr_outside
from engine.memory import peak_gib, reset_peak
from engine.perceptual import PerceptualLoss
from engine.precision import Precision, native_precisions

PSNR_TOLERANCE_DB = 0.5
REACHED_TOLERANCE = 0.05


def precisions(device: torch.device) -> list[Precision]:
    """What to compare on `device`: float32 first (the reference), then each reduced precision it runs
    (`engine.precision.native_precisions`: none on a GPU before Ampere)."""
    return list(native_precisions(device))


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
) -> tuple[dict[str, Any], EditingVector]:
    """The three modes once in `precision`: ms per update, total s and quality (float32 renders). The
    refinement applies `vector` (default: the edit's own), so that every precision refines the same one."""
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


def compare(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """`other`'s speed-up per update and quality differences against `reference` (float32)."""
    speedup = {m: ratio(reference[m]["ms_per_step"], other[m]["ms_per_step"]) for m in ("invert", "optimize", "refine")}
    psnr_diffs = {
        "invert": other["invert"]["psnr_db"] - reference["invert"]["psnr_db"],
        "optimize": other["optimize"]["psnr_outside_db"] - reference["optimize"]["psnr_outside_db"],
        "refine": other["refine"]["psnr_outside_db"] - reference["refine"]["psnr_outside_db"],
    }
    reached_diff = other["optimize"]["reached"] - reference["optimize"]["reached"]
    equal = all(abs(d) <= PSNR_TOLERANCE_DB for d in psnr_diffs.values()) and abs(reached_diff) <= REACHED_TOLERANCE
    return {
        "speedup_per_step": speedup,
        "psnr_difference_db": {k: round(v, 3) for k, v in psnr_diffs.items()},
        "reached_difference": round(reached_diff, 4),
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
    return {
        "tolerances": {"psnr_db": PSNR_TOLERANCE_DB, "reached": REACHED_TOLERANCE},
        "runs": runs,
        "against_float32": {p: compare(reference, r) for p, r in runs.items() if p != "float32"},
    }


def cell(result: dict[str, Any]) -> str:
    """The RESULTS.md cell: per precision, the per-update speed-ups and the quality verdict."""
    parts = []
    for p, c in result["against_float32"].items():
        s = c["speedup_per_step"]
        worst = max(c["psnr_difference_db"].values(), key=abs)
        verdict = "equal quality" if c["equal_quality"] else "quality differs"
        parts.append(
            f"{p}: invert {s['invert']}x, optimize {s['optimize']}x, refine {s['refine']}x per step; "
            f"PSNR {worst:+.2f} dB, reached {c['reached_difference']:+.3f}: {verdict}"
        )
    return "; ".join(parts)


def run(ctx: Context) -> SectionResult:
    bundle = ctx.bundle()
    steps = default_steps(bundle, ctx.quick)
    ctx.log(f"precision: {', '.join(precisions(ctx.device))} on {ctx.device}, steps {steps}")
    result = compare_precisions(bundle, edit_input(bundle), ctx.perceptual(bundle), steps, ctx.device)
    result["steps"] = steps
    return SectionResult(result, {"precision": cell(result)})
