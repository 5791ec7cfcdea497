"""Loading every bundle of the models directory once per process (gateway and workers alike)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Collection
from pathlib import Path

import torch

from engine import Bundle, BundleError, load_bundle, render
from engine.bundle import read_spec
from engine.precision import Precision, check_precision, forward_precision, ieee_float32, loop_precision

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; anything else as torch reads it (cpu, cuda, cuda:1)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BundleError(f"unknown device {name!r}: cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BundleError(f"device {name!r} was asked for but CUDA is not available")
    return device


def bundle_dirs(models_dir: Path) -> list[Path]:
    """Sub-directories holding a bundle.json (or `models_dir` itself when it is one bundle)."""
    if (models_dir / "bundle.json").is_file():
        return [models_dir]
    if not models_dir.is_dir():
        raise BundleError(f"models directory {models_dir} does not exist (set EDITGAN_MODELS_DIR)")
    return sorted(p for p in models_dir.iterdir() if (p / "bundle.json").is_file())


NO_BUNDLE = (
    "no bundle (a directory with bundle.json) in {}: set EDITGAN_MODELS_DIR to a directory of bundles (a "
    "checkout's models/ holds the demo model; an installed package carries none)"
)


def check_models(models_dir: Path) -> list[str]:
    """The names of the bundles in `models_dir`, from their bundle.json alone (no weights read): a quick
    check, before starting processes, that there is at least one and that each describes itself."""
    names = [read_spec(path).name for path in bundle_dirs(models_dir)]
    if not names:
        raise BundleError(NO_BUNDLE.format(models_dir))
    return names


def load_models(
    models_dir: Path, device: torch.device, *, verify: bool = True, only: Collection[str] | None = None
) -> dict[str, Bundle]:
    """name -> loaded bundle for every bundle found (`only`: for those named, each of which must be
    there); at least one is required. On CUDA the process's convolutions become IEEE float32
    (`ieee_float32`): renders are exact, TF32 is a loop's opt-in."""
    if device.type == "cuda":
        ieee_float32()
    paths = bundle_dirs(models_dir)
    if only is not None:
        found = {read_spec(path).name: path for path in paths}
        if missing := sorted(set(only) - set(found)):
            raise BundleError(
                f"EDITGAN_WORKER_MODELS names {', '.join(missing)}, not in {models_dir} (it has {sorted(found)})"
            )
        paths = [path for name, path in found.items() if name in only]
    bundles: dict[str, Bundle] = {}
    for path in paths:
        bundle = load_bundle(path, device, verify=verify)
        if bundle.spec.name in bundles:
            raise BundleError(f"two bundles are named {bundle.spec.name!r} in {models_dir}")
        bundles[bundle.spec.name] = bundle
        log.info("loaded model %s from %s on %s", bundle.spec.name, path, device)
    if not bundles:
        raise BundleError(NO_BUNDLE.format(models_dir))
    return bundles


def compile_models(bundles: dict[str, Bundle], *, gradients: bool, setting: Precision | None = None) -> None:
    """Compile each generator's synthesis (`Generator.compile_synthesis`) and run it once for each kind of
    call the process makes, so that no request waits for a compilation: renders of one latent and of two
    (the second size makes the batch dimension dynamic, so every micro-batch size shares one graph) and,
    with `gradients`, a forward and backward pass in each precision the loops run in (`loop_precisions`
    of EDITGAN_PRECISION `setting`: autocast is part of what a graph is compiled for)."""
    for name, bundle in bundles.items():
        if missing := missing_compiler(bundle.device):
            raise BundleError(missing)
        start = time.perf_counter()
        generator = bundle.generator
        generator.compile_synthesis()
        w = generator.sample_w_plus(2, seed=0)
        render(bundle, w[:1])
        render(bundle, w)
        for precision in sorted(set(loop_precisions(bundle, setting).values())) if gradients else []:
            with torch.enable_grad(), loop_precision(bundle.device, precision):
                x = w[:1].clone().requires_grad_(True)
                with forward_precision(bundle.device, precision):
                    out = generator.synthesis(x, return_features=True)
                    loss = out.image.float().sum() + sum(f.float().sum() for f in out.features or [])
                loss.backward()
        log.info("compiled model %s in %.1f s", name, time.perf_counter() - start)


def loop_precisions(bundle: Bundle, setting: Precision | None) -> dict[str, Precision]:
    """The precision of each loop (invert, edit, refine): EDITGAN_PRECISION, else the bundle's default."""
    defaults = bundle.spec.defaults
    return {m: setting or defaults.get(m, {}).get("precision") or "float32" for m in ("invert", "edit", "refine")}


def check_precisions(bundles: dict[str, Bundle], setting: Precision | None) -> None:
    """At start-up, each loop's precision (`loop_precisions`) on the bundle's device: bfloat16 where it
    would be emulated (a GPU before Ampere, a CPU without AVX-512) is a BundleError, tf32 without TF32 a
    logged warning (it then runs as float32)."""
    warnings: dict[str, None] = {}  # once each, in order
    for name, bundle in bundles.items():
        for mode, precision in loop_precisions(bundle, setting).items():
            source = "EDITGAN_PRECISION" if setting else f"bundle {name} defaults.{mode}.precision"
            try:
                if warning := check_precision(bundle.device, precision):
                    warnings[f"{source}: {warning}"] = None
            except ValueError as exc:
                raise BundleError(f"{source}: {exc}") from exc
    for warning in warnings:
        log.warning("%s", warning)


def warn_cuda_graphs(bundles: dict[str, Bundle], enabled: bool) -> None:
    """At start-up: EDITGAN_CUDA_GRAPHS applies to the models on a CUDA device; the others run eagerly, said
    once in the log (as tf32 on a CPU: one setting may serve gateways on CPUs and workers on GPUs)."""
    if elsewhere := [f"{name} on {b.device}" for name, b in bundles.items() if enabled and b.device.type != "cuda"]:
        log.warning("EDITGAN_CUDA_GRAPHS applies to models on a CUDA device; %s: eager", ", ".join(elsewhere))


def missing_compiler(device: torch.device) -> str | None:
    """Why torch.compile cannot build kernels for `device` here, or None. Inductor compiles C++ for a CPU
    and Triton builds a C launcher for a GPU, with the system's compiler; the service's image has none."""
    kind, names = ("C++", ("g++", "clang++")) if device.type == "cpu" else ("C", ("gcc", "cc", "clang"))
    variable = "CXX" if device.type == "cpu" else "CC"
    if os.environ.get(variable) or any(shutil.which(n) for n in names):
        return None
    return (
        f"EDITGAN_COMPILE needs a {kind} compiler on {device.type} ({variable}, or one of {', '.join(names)} on "
        "PATH): torch.compile builds its kernels with it. Install one (Debian: apt-get install g++), or unset "
        "EDITGAN_COMPILE."
    )
