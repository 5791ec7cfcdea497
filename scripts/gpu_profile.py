"""Where the time of a vector edit's render and of an optimisation-edit update goes, on a lent GPU.

    python3 scripts/gpu_profile.py [--device cuda] [--size 512] [--budget 180] [--out DIR]

For the paper-scale car architecture (random weights) and the shipped demo model: wall time, the GPU's
kernel time in the same span (busy share) and kernel launches, from `torch.profiler`, the render on an
engine thread beside a thread that keeps the GIL busy, at several switch intervals (the gateway's event
loop under load), and how often an update makes the host wait for the GPU; then, while the budget lasts,
the render through `torch.compile` with CUDA graphs ("reduce-overhead") and with the default mode. Each
study also runs the service's own CUDA graphs (EDITGAN_CUDA_GRAPHS: renders of 1 and 16, an edit's
updates), cuDNN's autotuner, and the maps NCHW against channels-last in each native precision (`layouts`).
The refinement's updates are profiled as the optimisation's.
A busy share well under 1 means the host (Python, launches) bounds the step, not the GPU: CUDA graphs and
fewer, fused kernels pay there, reduced precision does not.
Prints JSON; the profiler tables go to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.profiler import DeviceType, ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.inputs import edit_input
from bench.paper import car_bundle
from bench.timing import StepClock, repeat, sync
from engine import Bundle, layers, load_bundle, optimize_edit, refine, render, segmenter
from engine.graphs import GraphedRenderer
from engine.optim import WARMUP_STEPS
from engine.perceptual import LPIPSLoss, PerceptualLoss
from engine.precision import ieee_float32, native_precisions
from schemas.settings import SHIPPED_MODELS


def profiled(fn: Callable[[], Any], device: torch.device, table: Path) -> dict[str, float]:
    """One profiled call of `fn`: wall ms, kernel ms, busy share, launches; the table written to `table`."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        sync()
        wall = time.perf_counter() - start
    averages = prof.key_averages()
    # Kernels only: an operator's row repeats, as its own self time, the kernels it launched.
    kernel_us = sum(e.device_time_total for e in prof.events() if e.device_type == DeviceType.CUDA)
    launches = sum(e.count for e in averages if e.key.startswith(("cudaLaunch", "cuLaunch")))
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table.write_text(averages.table(sort_by=sort, row_limit=40, max_name_column_width=60))
    return {
        "wall_ms": round(wall * 1000, 2),
        "kernel_ms": round(kernel_us / 1000, 2),
        "busy": round(kernel_us / 1000 / (wall * 1000), 3) if wall else 0.0,
        "launches": launches,
    }


def median_ms(fn: Callable[[], Any], n: int) -> float:
    return round(statistics.median(repeat(fn, n)) * 1000, 2)


def by_column_tile(measure: Callable[[], float], bundle: Bundle) -> dict[str, float]:
    """`measure()` with each horizontal pass of the dense segmentation (`engine.segmenter._HORIZONTAL_TILE`;
    0 is the weighted gather), so that the default per device rests on a measurement."""
    kind, tiles, out = bundle.device.type, segmenter._HORIZONTAL_TILE, {}
    before = tiles.get(kind)
    try:
        for tile in (0, 32, 64, 128):
            tiles[kind] = tile
            measure()  # the new plan's first use builds it
            out[str(tile)] = measure()
    finally:
        if before is None:
            tiles.pop(kind, None)
        else:
            tiles[kind] = before
    return out


def _hold_the_gil(stop: threading.Event) -> None:
    """Pure Python until `stop`: it gives the GIL up only when another thread asks and the switch interval
    has passed, as an event loop busy with other requests does."""
    while not stop.is_set():
        sum(range(200))


def beside_busy_python(render_once: Callable[[], Any], n: int = 20) -> dict[str, float]:
    """Render ms (median of `n`) on an engine thread, as the gateway renders: alone, then beside a thread
    that keeps the GIL busy, at Python's default switch interval (5 ms) and shorter ones. Torch releases the
    GIL around each op, so a host-bound render re-acquires it once per op; if the busy thread stretches the
    render, the gateway's batching on a GPU is bounded by these waits rather than by the GPU."""
    engine = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
    before = sys.getswitchinterval()

    def timed() -> float:
        start = time.perf_counter()
        render_once()
        sync()
        return time.perf_counter() - start

    def median_on_engine() -> float:
        return round(statistics.median(engine.submit(timed).result() for _ in range(n)) * 1000, 2)

    try:
        engine.submit(timed).result()  # this thread's first parallel region and allocations
        out = {"alone": median_on_engine()}
        for interval in (0.005, 0.0005, 0.0001):
            sys.setswitchinterval(interval)
            stop = threading.Event()
            busy = threading.Thread(target=_hold_the_gil, args=(stop,), daemon=True)
            busy.start()
            try:
                out[f"busy_{interval * 1000:g}ms"] = median_on_engine()
            finally:
                stop.set()
                busy.join()
    finally:
        sys.setswitchinterval(before)
        engine.shutdown()
    return out


def cudnn_benchmark(edit: Callable[..., Any], steps: int) -> dict[str, Any]:
    """An optimisation edit's ms per update with cuDNN's autotuner on (each convolution shape timed once
    over every algorithm; the loops' shapes never change) against its heuristics, and both final losses."""
    out: dict[str, Any] = {}
    before = torch.backends.cudnn.benchmark
    try:
        for on in (False, True, False, True):
            torch.backends.cudnn.benchmark = on
            start = time.perf_counter()
            edit(1)  # with the autotuner on, the first call of each shape tries the algorithms
            first_s = time.perf_counter() - start
            clock = StepClock()
            final = edit(steps, clock)
            key = "on" if on else "off"
            out.setdefault(key, []).append(
                {
                    "ms_per_step": round(clock.per_step * 1000, 2),
                    "first_call_s": round(first_s, 2),
                    "final_loss": final.history[-1]["total"] if final.history else None,
                }
            )
    finally:
        torch.backends.cudnn.benchmark = before
    return out


def layouts(
    bundle: Bundle, w: torch.Tensor, perceptual: PerceptualLoss, edit: Callable[..., Any], steps: int
) -> dict[str, Any]:
    """The render's ms and an optimisation edit's ms per update and final loss in each native precision,
    with the generator's maps and weights (and the LPIPS network's) NCHW, as CUDA runs them now, and
    channels-last (`engine.layers.CUDA_MEMORY_FORMAT`). cuDNN's tensor-core kernels work channels-last and
    transpose NCHW maps around each call: at paper scale TF32 and bfloat16 gained only 1.04-1.44x per update
    in NCHW, far less than their arithmetic rates promise."""
    out: dict[str, Any] = {}
    before = layers.CUDA_MEMORY_FORMAT
    try:
        for name, layout in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            layers.CUDA_MEMORY_FORMAT = layout
            perceptual.to(memory_format=layout)
            row: dict[str, Any] = {"render_ms": median_ms(lambda: render(bundle, w), 10)}
            for precision in native_precisions(bundle.device):
                edit(1, precision=precision)  # cuDNN's and cuBLAS's first calls for these shapes and dtypes
                clock = StepClock()
                final = edit(steps, clock, precision=precision)
                row[precision] = {
                    "ms_per_step": round(clock.per_step * 1000, 2),
                    "final_loss": final.history[-1]["total"] if final.history else None,
                }
            out[name] = row
    finally:
        layers.CUDA_MEMORY_FORMAT = before
        perceptual.to(memory_format=torch.contiguous_format)
    return out


def device_waits(run: Callable[[], Any]) -> int:
    """How often `run` made the host wait for the GPU: CUDA's sync debug mode warns once per wait."""
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode(before)
    return sum("synchroniz" in str(w.message) for w in caught)


def study(name: str, bundle: Bundle, perceptual: PerceptualLoss, out: Path, steps: int) -> dict[str, Any]:
    inputs = edit_input(bundle)
    w = inputs.w
    mask = torch.from_numpy(inputs.mask.astype("int64"))
    result: dict[str, Any] = {"render_ms": median_ms(lambda: render(bundle, w), 10)}
    result["render_ms_by_column_tile"] = by_column_tile(lambda: median_ms(lambda: render(bundle, w), 10), bundle)
    result["render_profile"] = [profiled(lambda: render(bundle, w), bundle.device, out / f"{name}-render.txt")]
    batch = w.expand(16, -1, -1)
    result["render_16_ms"] = median_ms(lambda: render(bundle, batch), 5)
    result["render_ms_beside_busy_python"] = beside_busy_python(lambda: render(bundle, w))

    def edit(n: int, clock: StepClock | None = None, cuda_graphs: bool = False, precision: str = "float32") -> Any:
        params = {"steps": n, "cuda_graphs": cuda_graphs, "precision": precision}
        return optimize_edit(bundle, w, mask, inputs.region, perceptual=perceptual, params=params, progress=clock)

    edit(1)  # warm-up
    clock = StepClock()
    edited = edit(steps, clock)
    result["optimize_ms_per_step"] = round(clock.per_step * 1000, 2)
    if bundle.device.type == "cuda":
        result["cuda_graphs"] = probe(lambda: cuda_graphs(bundle, w, edit, steps))
        result["cudnn_benchmark"] = cudnn_benchmark(edit, steps)
        result["layouts"] = probe(lambda: layouts(bundle, w, perceptual, edit, steps))
        # the loop reads its logged terms once per step, after queueing the update (engine.optim)
        waits = device_waits(lambda: edit(steps)) - device_waits(lambda: edit(1))
        result["device_waits_per_update"] = round(waits / (steps - 1), 2)
    result["optimize_profile"] = updates_profile(edit, steps, bundle.device, out / f"{name}-optimize")

    # Refinement, the target furthest off (paper scale on the H100: 97 ms an update where 0.8 s for 29
    # updates needs 27): its updates' time and kernels, as the optimisation's, with the vector edited above.
    vector = edited.vector

    def refining(n: int, clock: StepClock | None = None) -> Any:
        return refine(bundle, w, [(vector, 1.0)], n, perceptual=perceptual, progress=clock)

    refining(1)  # warm-up
    clock = StepClock()
    refining(steps, clock)
    result["refine_ms_per_step"] = round(clock.per_step * 1000, 2)
    result["refine_profile"] = updates_profile(refining, steps, bundle.device, out / f"{name}-refine")
    return result


def updates_profile(run: Callable[[int], Any], steps: int, device: torch.device, stem: Path) -> dict[str, Any]:
    """A loop's run of one update and of `steps`, profiled (tables `<stem>-setup.txt`, `<stem>.txt`), and
    their difference per update: the updates alone, without the set-up."""
    one = profiled(lambda: run(1), device, stem.with_name(stem.name + "-setup.txt"))
    many = profiled(lambda: run(steps), device, stem.with_name(stem.name + ".txt"))
    return {
        "setup_and_1": one,
        f"setup_and_{steps}": many,
        "per_update": {k: round((many[k] - one[k]) / (steps - 1), 3) for k in ("wall_ms", "kernel_ms", "launches")},
    }


def probe(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`run()`, or the error it raised: a probe of something not measured before must not end the profile."""
    try:
        return run()
    except Exception as exc:
        return {"error": repr(exc)[:500]}


def cuda_graphs(bundle: Bundle, w: torch.Tensor, edit: Callable[..., Any], steps: int) -> dict[str, Any]:
    """EDITGAN_CUDA_GRAPHS: renders of 1 and 16 latents replayed against eager ones (ms, largest image
    difference, share of equal labels), the capture's time, and an optimisation edit's ms per update."""
    renderer = GraphedRenderer(bundle, 16, [None])
    out: dict[str, Any] = {}
    for n, reps in ((1, 20), (16, 5)):  # 16 at 512 px: 0.8 s a render
        batch = w.expand(n, -1, -1)
        start = time.perf_counter()
        renderer.capture((n, None, True))
        sync()
        graphed, eager = renderer(batch), render(bundle, batch)
        out[str(n)] = {
            "capture_s": round(time.perf_counter() - start, 2),
            "eager_ms": median_ms(partial(render, bundle, batch), reps),
            "graphed_ms": median_ms(partial(renderer, batch), reps),
            "image_max_difference": float(f"{(graphed.image - eager.image).abs().max():.3g}"),
            "labels_equal": round(float((graphed.labels == eager.labels).float().mean()), 5),
        }
    clock = StepClock()
    edit(max(steps, 4 * WARMUP_STEPS), clock, cuda_graphs=True)  # the median update: a replay
    out["optimize_ms_per_step"] = round(clock.per_step * 1000, 2)
    return out


def compiled_render(bundle: Bundle, mode: str) -> dict[str, Any]:
    generator = bundle.generator
    before = generator._compiled  # None unless EDITGAN_COMPILE compiled it
    inputs = edit_input(bundle)
    start = time.perf_counter()
    generator._compiled = torch.compile(generator._synthesize, mode=mode)
    try:
        for _ in range(3):
            render(bundle, inputs.w)
        sync()
        compile_s = time.perf_counter() - start
        return {
            "mode": mode,
            "compile_s": round(compile_s, 1),
            "render_ms": median_ms(lambda: render(bundle, inputs.w), 20),
        }
    finally:
        generator._compiled = before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--budget", type=float, default=180.0, help="seconds; compile probes start only inside it")
    parser.add_argument("--out", type=Path, default=Path("artifacts/profile"))
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        ieee_float32()  # as the workers run by default
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    car = car_bundle(args.size, device)
    vgg = LPIPSLoss("vgg").freeze().to(device)
    report["paper"] = study("paper", car, vgg, args.out, args.steps)
    print(json.dumps(report), flush=True)
    demo = load_bundle(SHIPPED_MODELS / "demo-faces", device)
    report["demo"] = study("demo", demo, demo.perceptual(), args.out, args.steps)
    print(json.dumps(report), flush=True)
    for name, bundle, need in (("demo", demo, 40), ("paper", car, 70)):
        for mode in ("reduce-overhead", "default"):
            if deadline - time.monotonic() < need:
                report.setdefault("skipped", []).append(f"{name} {mode}")
                continue
            try:
                report.setdefault("compiled_render", {}).setdefault(name, []).append(compiled_render(bundle, mode))
            except Exception as exc:  # a probe: report and go on
                report.setdefault("compiled_render", {}).setdefault(name, []).append(
                    {"mode": mode, "error": repr(exc)[:500]}
                )
            print(json.dumps(report), flush=True)
    (args.out / "profile.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
