"""Values derived from frozen parameters, computed once per parameter version instead of on every call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn

T = TypeVar("T")


def frozen_derived(module: nn.Module, name: str, sources: Sequence[Tensor], make: Callable[[], T]) -> T:
    """`make()`, a function of `sources` only, cached on `module` under `name` until one of them changes.

    Rendering recomputed scaled and squared weights (and the segmenter its folded layers) on every call,
    which at 64 px cost as much as the small convolutions. The key is each source's version counter (bumped
    by in-place writes: `copy_`, `load_state_dict`, optimiser and EMA steps) and storage (new after `.to()`).
    Sources that require gradients are never cached: autograd must reach them, and training changes them
    every step. (A write through `.data` bypasses the version counter: the code base makes none.)
    """
    if any(s.requires_grad for s in sources) or torch.compiler.is_compiling():
        return make()  # (compiled: the graph computes it, fused with its neighbours, instead of a graph break)
    key = tuple((s._version, s.data_ptr(), s.dtype, s.device) for s in sources)
    cache: dict[str, tuple[tuple[Any, ...], Any]] = module.__dict__.setdefault("_frozen_derived", {})
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        # Never an inference tensor (were the first call under `torch.inference_mode`): a later call that
        # differentiates through the module could not save it for backward.
        with torch.inference_mode(False), torch.no_grad():
            hit = cache[name] = (key, make())
    return cast(T, hit[1])
