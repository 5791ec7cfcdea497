"""Section `compile`: the generator's synthesis through `torch.compile` (EDITGAN_COMPILE) against eager mode.

A copy of the model is compiled as the service processes compile theirs at start-up
(`workers.models.compile_models`: renders, and the loops' forward and backward pass; its time is reported)
and measured against the model as loaded, in the same run:

- A vector edit's render (generator and segmentation; only the generator is compiled) of 1 and of 16
  latents, in alternating blocks: ms, the speed-up, the largest image difference and the share of equal
  labels.
- The three loops with the model's default steps (`bench.precision.run_modes`), eager and compiled in turn:
  ms per update and the speed-up; the total loss at the first iterate, where both start from the same
  latent and only rounding separates them (within `START_TOLERANCE`), and at the last, where Adam has
  amplified that rounding: within the larger of `FINAL_TOLERANCE` and twice eager mode's own spread when
  its inputs move by one float32 step (as the naive section). On the demo model that spread is 43 % of
  the inversion's final loss (and 1.5 dB of its PSNR) over 300 steps: the loops are chaotic at the
  rounding level, so a fixed tolerance would judge rounding, not the compiler. Same losses: every loss
  within its tolerance. What the loops return (PSNR, painted pixels reached) is reported beside them.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
from functools import partial
from typing import Any

import torch

from bench.context import Context
from bench.inputs import EditInput, default_steps, edit_input
from bench.naive import FINAL_TOLERANCE, START_TOLERANCE
from bench.precision import MODES, compare, rounding_spread, run_modes
from bench.results import SectionResult
from bench.timing import ratio, relative, repeat, timed
from engine import Bundle, EditingVector, render
from engine.perceptual import PerceptualLoss
from workers.models import compile_models

RENDER_BATCHES = (1, 16)
BLOCK = 5  # renders per block; the blocks alternate eager and compiled


def compiled_copy(bundle: Bundle) -> tuple[Bundle, float]:
    """The bundle with a copy of its generator compiled and warmed up as a worker's is, and the seconds
    that took (the first calls compile)."""
    twin = dataclasses.replace(bundle, generator=copy.deepcopy(bundle.generator))
    _, seconds = timed(lambda: compile_models({bundle.spec.name: twin}, gradients=True))
    return twin, seconds


def compare_renders(eager: Bundle, compiled: Bundle, blocks: int) -> dict[str, Any]:
    """Per batch size: both renders' ms (median, alternating blocks), the speed-up and the agreement."""
    out: dict[str, Any] = {}
    for n in RENDER_BATCHES:
        w = eager.generator.sample_w_plus(n, seed=7)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for block in range(blocks):
            for key in ("eager", "compiled") if block % 2 == 0 else ("compiled", "eager"):
                bundle = eager if key == "eager" else compiled
                times[key] += repeat(partial(render, bundle, w), BLOCK, warmup=1)
        ms = {k: round(statistics.median(v) * 1000, 2) for k, v in times.items()}
        a, b = render(eager, w), render(compiled, w)  # the same latents
        out[str(n)] = {
            "ms": ms,
            "speedup": ratio(ms["eager"], ms["compiled"]),
            "image_max_difference": float(f"{(a.image - b.image).abs().max():.3g}"),
            "labels_equal": round(float((a.labels == b.labels).float().mean()), 5),
        }
    return out


def compare_loops(
    eager: Bundle, compiled: Bundle, inputs: EditInput, perceptual: PerceptualLoss, steps: dict[str, int], reps: int
) -> dict[str, Any]:
    """Eager and compiled runs of the three loops, alternating `reps` times; the refinements all apply the
    first eager edit's vector, so that both refine the same one."""
    runs: dict[str, list[dict[str, Any]]] = {"eager": [], "compiled": []}
    vector: EditingVector | None = None
    for r in range(reps):
        for key in ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager"):
            run, vector = run_modes(eager if key == "eager" else compiled, inputs, perceptual, steps, "float32", vector)
            runs[key].append(run)
    ms = {k: {m: round(statistics.median(r[m]["ms_per_step"] for r in v), 2) for m in MODES} for k, v in runs.items()}
    first = {k: v[0] for k, v in runs.items()}  # the losses and the quality of each one's first run
    start = {m: relative(first["compiled"][m]["loss_start"], first["eager"][m]["loss_start"]) for m in MODES}
    final = {m: relative(first["compiled"][m]["loss_final"], first["eager"][m]["loss_final"]) for m in MODES}
    assert vector is not None
    spread = rounding_spread(eager, inputs, perceptual, steps, first["eager"], vector)
    tolerance = {m: float(f"{max(FINAL_TOLERANCE, 2 * spread['loss'][m]):.3g}") for m in MODES}
    quality = {k: v for k, v in compare(first["eager"], first["compiled"], spread).items() if k != "speedup_per_step"}
    return {
        "ms_per_step": ms,
        "speedup_per_step": {m: ratio(ms["eager"][m], ms["compiled"][m]) for m in MODES},
        "start_loss_relative_difference": start,
        "start_tolerance": START_TOLERANCE,
        "final_loss_relative_difference": final,
        "rounding_spread": spread,
        "final_tolerance": tolerance,
        "quality": quality,  # what the loops return, for information: the losses decide
        "same_losses": all(start[m] <= START_TOLERANCE and final[m] <= tolerance[m] for m in MODES),
        "runs": runs,
    }


def cell(result: dict[str, Any]) -> str:
    renders = ", ".join(f"{n}: {r['speedup']}x" for n, r in result["render"].items())
    loops = result["loops"]
    per_step = ", ".join(f"{m} {loops['speedup_per_step'][m]}x" for m in MODES)
    verdict = "same losses" if loops["same_losses"] else "losses differ"
    final = ", ".join(
        f"{m} {loops['final_loss_relative_difference'][m]:.1e} (tol {loops['final_tolerance'][m]:.1e})" for m in MODES
    )
    return (
        f"render of {renders}; per update {per_step}; first-iterate loss diff at most "
        f"{max(loops['start_loss_relative_difference'].values()):.1e} (tol {START_TOLERANCE:.0e}), final {final}: "
        f"{verdict}; compile {result['compile_s']} s"
    )


def run(ctx: Context) -> SectionResult:
    bundle = ctx.bundle()
    steps = default_steps(bundle, ctx.quick)
    ctx.log(f"compile: compiling a copy of the generator on {ctx.device}")
    compiled, seconds = compiled_copy(bundle)
    ctx.log(f"compile: renders of {', '.join(map(str, RENDER_BATCHES))} latents, eager and compiled")
    result: dict[str, Any] = {
        "compile_s": round(seconds, 1),
        "render": compare_renders(bundle, compiled, 2 if ctx.quick else 6),
    }
    ctx.log(f"compile: the loops eager and compiled, steps {steps}")
    perceptual = ctx.perceptual(bundle)
    result["loops"] = compare_loops(bundle, compiled, edit_input(bundle), perceptual, steps, 1 if ctx.quick else 2)
    result["steps"] = steps
    torch.compiler.reset()  # the compiled copy's graphs are not needed by later sections
    return SectionResult(result, {"compile": cell(result)})
