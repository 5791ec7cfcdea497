"""Hyperparameters of inversion, optimisation editing and refinement.

Defaults are the official release's (EDITGAN.md sections 3 and 6). A bundle overrides them in
`bundle.json` (`defaults.invert`, `defaults.edit`, `defaults.refine`) and a call overrides the bundle.
`steps` always counts Adam updates: the official loops run `range(1, steps)`, so its 100 embedding
steps and 30 editing steps are 99 and 29 updates here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self

from engine.errors import InputError
from engine.precision import PRECISIONS, Precision

MAX_STEPS = 5000

EncoderInput = Literal["signed", "unit"]


@dataclass(frozen=True)
class _Params:
    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "steps" and not (isinstance(value, int) and 0 <= value <= MAX_STEPS):
                raise InputError(f"steps must be an integer in [0, {MAX_STEPS}], got {value!r}")
            if f.name == "lr" and not (isinstance(value, int | float) and 0 < value <= 10):
                raise InputError(f"lr must be in (0, 10], got {value!r}")
            if f.name.endswith("_weight") and not (isinstance(value, int | float) and 0 <= value <= 1e6):
                raise InputError(f"{f.name} must be a number in [0, 1e6], got {value!r}")
        if getattr(self, "roi_dilation", 0) not in range(0, 65):
            raise InputError("roi_dilation must be an integer in [0, 64]")
        if getattr(self, "upsample", "nearest") not in ("nearest", "bilinear"):
            raise InputError("upsample must be 'nearest' or 'bilinear'")
        if getattr(self, "encoder_input", "signed") not in ("signed", "unit"):
            raise InputError("encoder_input must be 'signed' or 'unit'")
        if getattr(self, "precision", "float32") not in PRECISIONS:
            raise InputError(f"precision must be one of {list(PRECISIONS)}")

    @classmethod
    def resolve(cls, *layers: Mapping[str, Any] | None) -> Self:
        """Defaults, then each mapping in order (bundle defaults, then call overrides); unknown keys refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        merged: dict[str, Any] = {}
        for layer in layers:
            if not layer:
                continue
            if unknown := sorted(set(layer) - names):
                raise InputError(f"unknown {cls.__name__} keys {unknown}; allowed: {sorted(names)}")
            merged.update({k: v for k, v in layer.items() if v is not None})
        return cls(**merged)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class InvertParams(_Params):
    """W+ optimisation that embeds a real image (official `run_embedding_optimization`)."""

    steps: int = 99  # Adam updates
    lr: float = 0.1  # peak of the learning-rate schedule
    lr_rampup: float = 0.05  # fraction of the run spent ramping the rate up linearly
    lr_rampdown: float = 0.25  # fraction at the end spent on a cosine decay to zero
    lpips_weight: float = 10.0
    mse_weight: float = 1.0  # on [0, 1] images, as the official loss
    encoder_weight: float = 1.0  # ||w - E(G(w))||^2: keeps w where the encoder can map it
    encoder_input: EncoderInput = "signed"  # "unit": the official quirk of feeding E images in [0, 1]
    encoder_batch_statistics: bool = False  # True: the official tool's train-mode BatchNorm in E
    use_encoder: bool = True  # start from E(image); False: from the average latent
    precision: Precision = "float32"  # of the loop's losses (engine.precision): float32, tf32 or bfloat16
    cuda_graphs: bool = False  # replay the loss and gradient as one CUDA graph after 3 eager updates (CUDA only)


@dataclass(frozen=True)
class EditParams(_Params):
    """Optimisation-based editing (official `run_optimization_editGAN`)."""

    steps: int = 29  # Adam updates
    lr: float = 0.02  # constant
    rgb_weight: float = 15.0  # multiplies the whole image term outside the region
    lpips_weight: float = 10.0
    mse_weight: float = 5.0  # mean over the whole canvas with the region zeroed, as the official loss
    ce_weight: float = 1.0  # cross-entropy of the ensemble's mean logits inside the region
    encoder_weight: float = 1.0
    roi_dilation: int = 3  # pixels (3 iterations of a 3x3 dilation in the official code)
    upsample: Literal["nearest", "bilinear"] = "nearest"  # feature interpolation inside the loop
    encoder_input: EncoderInput = "signed"
    encoder_batch_statistics: bool = False
    precision: Precision = "float32"  # of the loop's losses (engine.precision): float32, tf32 or bfloat16
    cuda_graphs: bool = False  # replay the loss and gradient as one CUDA graph after 3 eager updates (CUDA only)


@dataclass(frozen=True)
class RefineParams(_Params):
    """Self-supervised refinement after applying vectors (official `run_optimization_post_process`)."""

    steps: int = 29  # Adam updates (the official UI's "30" choice); 0 = vectors only
    lr: float = 0.02
    rgb_weight: float = 15.0
    lpips_weight: float = 10.0
    mse_weight: float = 5.0
    ce_weight: float = 1.0
    roi_dilation: int = 3
    upsample: Literal["nearest", "bilinear"] = "nearest"
    precision: Precision = "float32"
    cuda_graphs: bool = False  # replay the loss and gradient as one CUDA graph after 3 eager updates (CUDA only)


def lr_schedule(t: float, peak: float, rampup: float, rampdown: float) -> float:
    """StyleGAN-projector schedule at progress t in [0, 1]: linear warm-up, plateau, cosine decay."""
    ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    ramp *= min(1.0, t / rampup) if rampup > 0 else 1.0
    return peak * ramp
