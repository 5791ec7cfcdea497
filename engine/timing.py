"""Wall-clock seconds of engine work: CUDA returns before its kernels run, so the clock waits for them."""

from __future__ import annotations

import time

import torch


def elapsed(start: float, device: torch.device) -> float:
    """Seconds since `start` (a `time.perf_counter()` reading), once `device`'s queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
