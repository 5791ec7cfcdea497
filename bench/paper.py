"""Section `paper`: the job timings at the scale of the paper's car model, with random weights.

The official architecture (EDITGAN.md 1.5, 2b, 2c): StyleGAN2 config-f at 512 px (16 W+ rows, 6016-d
feature stack), the FPN ResNet-50 encoder, 10 pixel classifiers over the 32 car classes, LPIPS with the
VGG16 architecture; the official hyperparameters (`engine.params`) with few steps. Weights are random, so
only the times (and memory) mean anything; every figure is labelled "random weights, <device>, N steps".
On a GPU the three loops run again with EDITGAN_CUDA_GRAPHS (`engine.graphs`): speed-up per step
and the final losses against the eager runs.
The naive loop (`bench/naive.py`) is compared too when its full-resolution stack, its gradient and the
classifiers' activations fit comfortably in the device's free memory.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from functools import partial
from importlib import resources
from typing import Any

import psutil
import torch

from bench.context import Context
from bench.inputs import canvas, edit_input
from bench.naive import FINAL_TOLERANCE, compare, full_stack_bytes
from bench.precision import cell as precision_cell
from bench.precision import compare_precisions
from bench.results import SectionResult
from bench.timing import StepClock, gib, ratio, relative, repeat, rss_peak, timed
from engine import Bundle, BundleSpec, ClassInfo, Geometry, apply_vectors, invert, optimize_edit, refine
from engine.bundle import build_networks
from engine.encoder import EncoderConfig
from engine.generator import GeneratorConfig
from engine.memory import peak_gib, reset_peak
from engine.perceptual import LPIPSLoss
from engine.segmenter import SegmenterConfig


def car_bundle(size: int, device: torch.device) -> Bundle:
    """The official car architecture with seeded random weights (size < 512 only for smoke runs)."""
    torch.manual_seed(0)
    car = json.loads(resources.files("engine").joinpath("data/car.json").read_text())
    g = GeneratorConfig(size=size)  # config-f: style 512, 8 mapping layers, channel multiplier 2
    spec = BundleSpec(
        name="car-random",
        generator=g,
        segmenter=SegmenterConfig(
            feature_channels=tuple(c for c, _ in g.feature_shapes), num_classes=32, out_size=size, num_models=10
        ),
        encoder=EncoderConfig(resolution=size, n_latent=g.n_latent),  # ResNet-50 FPN, the official widths
        classes=[ClassInfo(**c) for c in car["classes"]],
        regions=car["regions"],
        geometry=Geometry(size, top=size // 8, left=0, height=size * 3 // 4, width=size),  # rows 64:448 at 512
        perceptual={"kind": "lpips", "net": "vgg"},
    )
    generator, segmenter, encoder = build_networks(spec)
    generator.w_avg.copy_(generator.mean_latent(512, seed=0))
    for net in (generator, segmenter, encoder):
        assert net is not None
        net.eval().requires_grad_(False)
    return Bundle(
        spec=spec,
        generator=generator.to(device),
        segmenter=segmenter.to(device),
        encoder=encoder.to(device) if encoder is not None else None,
        device=device,
    )


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(psutil.virtual_memory().available)


def _peak(device: torch.device, sampled: dict[str, int]) -> float | None:
    gpu = peak_gib(device)
    return gpu if gpu is not None else gib(sampled["peak_bytes"])


LOOPS = ("invert", "optimize", "refine")


def graph_summary(eager: dict[str, Any], graphed: dict[str, Any]) -> dict[str, Any]:
    """Per loop: the graphed run's times, its speed-up per step over the eager run, and the largest relative
    difference between the two runs' final logged losses (a replay runs the captured kernels: within
    `FINAL_TOLERANCE`, the naive comparison's, means the same losses)."""
    out: dict[str, Any] = {}
    for mode in LOOPS:
        a, b = graphed[mode], eager[mode]
        diff = max(relative(a["final_losses"][k], v) for k, v in b["final_losses"].items())
        out[mode] = a | {"speedup_per_step": ratio(b["s_per_step"], a["s_per_step"]), "final_loss_difference": diff}
    out["same_losses"] = all(out[m]["final_loss_difference"] <= FINAL_TOLERANCE for m in LOOPS)
    return out


def run(ctx: Context) -> SectionResult:
    steps = ctx.paper_steps or (1 if ctx.quick else 3)
    label = f"random weights, {ctx.device.type}, {steps} steps" + (
        f", {ctx.paper_size} px (smoke)" if ctx.paper_size != 512 else ""
    )
    ctx.log(f"paper: building the car architecture at {ctx.paper_size} px ({label})")
    reset_peak(ctx.device)
    out: dict[str, Any] = {"label": label, "resolution": ctx.paper_size, "steps": steps}
    with rss_peak() as sampled:
        bundle, seconds = timed(lambda: car_bundle(ctx.paper_size, ctx.device))
        perceptual = LPIPSLoss("vgg").freeze().to(ctx.device)  # VGG16 architecture, random backbone
        out |= {"build_s": round(seconds, 1), "feature_dim": bundle.spec.generator.feature_dim}
        inputs = edit_input(bundle)
        out["region"] = {"name": inputs.region, "classes": inputs.region_classes}

        def step_timed(mode: str, call: Callable[[int, StepClock], Any], into: dict[str, Any] = out) -> Any:
            # One untimed update first, as a warm worker has done: the first call on a GPU also pays for
            # kernel selection and the libraries' lazy start-up, which a served job never sees.
            ctx.log(f"paper: {mode}")
            call(1, StepClock())
            clock = StepClock()
            result, total = timed(lambda: call(steps, clock))
            into[mode] = {"s_per_step": round(clock.per_step, 3), "total_s": round(total, 2), "steps": steps}
            into[mode]["final_losses"] = clock.last
            return result

        image = canvas(bundle, inputs.photo)
        mask = torch.from_numpy(inputs.mask.astype("int64"))

        # The loops as a job runs them, `extra` over the default params; refinement applies the edit's vector.
        def inverting(n: int, clock: StepClock, extra: dict[str, Any] | None = None) -> Any:
            params = {"steps": n} | (extra or {})
            return invert(bundle, image, perceptual=perceptual, params=params, progress=clock)

        def editing(n: int, clock: StepClock, extra: dict[str, Any] | None = None) -> Any:
            params = {"steps": n} | (extra or {})
            return optimize_edit(
                bundle, inputs.w, mask, inputs.region, perceptual=perceptual, params=params, progress=clock
            )

        def refining(n: int, clock: StepClock, extra: dict[str, Any] | None = None) -> Any:
            terms = [(edit.vector, 1.0)]
            return refine(bundle, inputs.w, terms, n, perceptual=perceptual, params=extra, progress=clock)

        step_timed("invert", inverting)
        edit = step_timed("optimize", editing)
        out["optimize"]["region_pixels"] = int(edit.region.sum())
        # One render + segmentation of the content box, as `POST /edit/vector` runs it: the median of repeats.
        times = repeat(lambda: apply_vectors(bundle, inputs.w, [(edit.vector, 1.0)]), 3 if ctx.quick else 20)
        out["vector_edit_s"] = round(statistics.median(times), 4)
        step_timed("refine", refining)
        if ctx.device.type == "cuda":  # EDITGAN_CUDA_GRAPHS: the same loops, each update after the third a replay
            graphed: dict[str, Any] = {}
            try:
                for mode, loop in zip(LOOPS, (inverting, editing, refining), strict=True):
                    step_timed(mode, partial(loop, extra={"cuda_graphs": True}), graphed)
                out["cuda_graphs"] = graph_summary(out, graphed)
            except Exception as exc:  # its first GPU run must not take the section's other figures with it
                out["cuda_graphs"] = {"error": repr(exc)[-1500:]}
        peak = _peak(ctx.device, sampled)  # the engine's loops in float32: before the naive loop's stack
        # The official loop holds the stack, its gradient and the ensemble's activations at every pixel.
        needed = 3 * full_stack_bytes(bundle)
        if needed <= _free_bytes(ctx.device) // 2:
            ctx.log("paper: the naive official loop")
            reset_peak(ctx.device)
            out["naive"] = compare(bundle, inputs, steps=steps, reps=1, perceptual=perceptual)
            out["naive"]["peak_memory_gib"] = _peak(ctx.device, sampled)  # on a CPU: the block's peak so far
        else:
            out["naive"] = {"skipped": f"needs about {gib(needed)} GiB, more than half the free memory"}
        if ctx.paper_precision if ctx.paper_precision is not None else ctx.device.type == "cuda":
            ctx.log("paper: the loops in reduced precision against float32")
            modes = dict.fromkeys(("invert", "optimize", "refine"), steps)
            out["precision"] = compare_precisions(bundle, inputs, perceptual, modes, ctx.device)
    out["peak_memory_gib"] = peak
    naive = out["naive"].get("speedup_per_step")
    cell = (
        f"edit {out['optimize']['s_per_step']} s/step, refine {out['refine']['s_per_step']}, "
        f"invert {out['invert']['s_per_step']}; naive {f'{naive}x slower' if naive else 'skipped'}; "
        f"peak {out['peak_memory_gib']} GiB ({label})"
    )
    if "error" in out.get("cuda_graphs", {}):
        cell += "; CUDA graphs: failed (see the JSON)"
    elif "cuda_graphs" in out:
        graphs = out["cuda_graphs"]
        speedups = ", ".join(f"{m} {graphs[m]['speedup_per_step']}x" for m in LOOPS)
        verdict = "same losses" if graphs["same_losses"] else "losses differ"
        cell += f"; CUDA graphs: {speedups} per step ({verdict})"
    if "precision" in out:
        cell += f"; {precision_cell(out['precision'])}"
    return SectionResult(out, {"paper": cell})
