"""Reduced-precision arithmetic for the optimisation loops (inversion, editing, refinement), opt-in.

- "float32": exact, the default everywhere.
- "tf32": CUDA matrix products and convolutions on TF32 tensor cores (10-bit mantissa, float32 range);
  elsewhere the same as float32, since CPUs have no TF32.
- "bfloat16": the loss forward under `torch.autocast` in bfloat16 (CUDA GPUs from Ampere on, and CPUs
  with AVX-512; those with native bfloat16 dot products gain most). Products run in bfloat16 and reductions, softmax
  and losses in float32, while the latent, its gradient and Adam's state stay float32; the backward pass
  follows the dtypes autocast recorded.

Only the loop's loss is computed this way: the encoder's starting point, and the final rendering, PSNR
and segmentation that a job returns, always run in float32, so what a user sees is exact for the latent
found. `editgan bench --only precision` runs each mode beside float32 and compares what they return.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Literal, get_args

import torch

Precision = Literal["float32", "tf32", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

AMPERE = (8, 0)  # the first compute capability with TF32 and bfloat16 tensor cores


def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _cpu_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 on this CPU (AVX-512 or newer). Without it PyTorch falls back to its
    reference convolutions: an edit's step took 8-12x as long as in float32 on an AVX2-only EPYC."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def native_precisions(device: torch.device, capability: tuple[int, int] | None = None) -> tuple[Precision, ...]:
    """The precisions `device` runs natively, float32 first: TF32 and bfloat16 on CUDA GPUs of compute
    capability 8.0 or later (`capability`: the GPU's, read from it when None); bfloat16 on CPUs whose
    oneDNN has bfloat16 kernels."""
    if device.type != "cuda":
        return ("float32", "bfloat16") if _cpu_bfloat16() else ("float32",)
    if (capability or _capability(device)) >= AMPERE:
        return ("float32", "tf32", "bfloat16")
    return ("float32",)


def check_precision(
    device: torch.device, precision: Precision, capability: tuple[int, int] | None = None
) -> str | None:
    """None when `precision` runs natively on `device`; a warning for "tf32" without TF32 tensor cores
    (as on every CPU), which then runs, unchanged, as float32. Raises ValueError for bfloat16 where it
    would be emulated, far slower than float32: a GPU before Ampere, a CPU without oneDNN's bfloat16."""
    if precision in native_precisions(device, capability):
        return None
    if precision == "tf32":
        return f"precision tf32 has no TF32 tensor cores on {device}: the loops run in float32"
    if device.type != "cuda":
        raise ValueError(
            "precision bfloat16 needs a CPU with AVX-512 (oneDNN's bfloat16 kernels); on this one PyTorch "
            "would run it on reference convolutions, many times slower than float32: use float32"
        )
    cap = capability or _capability(device)
    raise ValueError(
        f"precision {precision} needs a GPU with bfloat16 tensor cores (compute capability "
        f"{AMPERE[0]}.{AMPERE[1]} or later); {device} has {cap[0]}.{cap[1]}: use float32"
    )


def ieee_float32() -> None:
    """cuDNN convolutions in IEEE float32 for the whole process, as matrix products already are.

    PyTorch runs convolutions in TF32 by default on Ampere and later GPUs, so without this a "float32"
    render on CUDA would be approximate. The service processes and the bench call it when they load models
    on CUDA; `loop_precision` switches TF32 on for a "tf32" loop only.
    """
    torch.backends.cudnn.allow_tf32 = False


@contextmanager
def loop_precision(device: torch.device, precision: Precision) -> Iterator[None]:
    """Around a whole loop (forward and backward passes) on CUDA: TF32 on for "tf32" and off for the other
    modes, whatever the process had (PyTorch's default has it on for convolutions), restored after."""
    if device.type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def forward_precision(
    device: torch.device, precision: Precision, *, cache: bool = True
) -> torch.autocast | nullcontext[None]:
    """Around one loss forward: bfloat16 autocast for "bfloat16" (with its cache of cast weights, unless
    `cache` is False: a CUDA graph capture needs it off), nothing otherwise."""
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return nullcontext()
