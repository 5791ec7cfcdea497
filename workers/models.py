"""Loading every bundle of the models directory once per process (gateway and workers alike)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from engine import Bundle, BundleError, load_bundle
from engine.precision import Precision, check_precision, ieee_float32

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; anything else as torch reads it (cpu, cuda, cuda:1)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
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


def load_models(models_dir: Path, device: torch.device, *, verify: bool = True) -> dict[str, Bundle]:
    """name -> loaded bundle for every bundle found; at least one is required. On CUDA the process's
    convolutions become IEEE float32 (`ieee_float32`): renders are exact, TF32 is a loop's opt-in."""
    if device.type == "cuda":
        ieee_float32()
    bundles: dict[str, Bundle] = {}
    for path in bundle_dirs(models_dir):
        bundle = load_bundle(path, device, verify=verify)
        if bundle.spec.name in bundles:
            raise BundleError(f"two bundles are named {bundle.spec.name!r} in {models_dir}")
        bundles[bundle.spec.name] = bundle
        log.info("loaded model %s from %s on %s", bundle.spec.name, path, device)
    if not bundles:
        raise BundleError(f"no bundle (a directory with bundle.json) in {models_dir}")
    return bundles


def check_precisions(bundles: dict[str, Bundle], setting: Precision | None) -> None:
    """At start-up, each loop's precision (EDITGAN_PRECISION, else the bundle's default) on the bundle's
    device: one without tensor cores for it is a BundleError for bfloat16 on a GPU (emulated, slower than
    float32) and a logged warning for tf32 (which then runs as float32)."""
    warnings: dict[str, None] = {}  # once each, in order
    for name, bundle in bundles.items():
        for mode in ("invert", "edit", "refine"):
            precision = setting or bundle.spec.defaults.get(mode, {}).get("precision") or "float32"
            source = "EDITGAN_PRECISION" if setting else f"bundle {name} defaults.{mode}.precision"
            try:
                if warning := check_precision(bundle.device, precision):
                    warnings[f"{source}: {warning}"] = None
            except ValueError as exc:
                raise BundleError(f"{source}: {exc}") from exc
    for warning in warnings:
        log.warning("%s", warning)
