"""GPU memory as torch's caching allocator counts it, for job results, the gateway's /metrics and the bench.

On a CPU these are None: the figure there is the process's resident memory, which only the kernel knows.
"""

from __future__ import annotations

import torch

GIB = 1024**3


def reset_peak(device: torch.device) -> None:
    """Start counting the peak afresh (before a job or a measured section)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """The most memory tensors held on `device` since the last `reset_peak` (or since start-up), in GiB."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / GIB, 3)


def usage_bytes(device: torch.device) -> dict[str, int] | None:
    """allocated (held by tensors now), reserved (cached by the allocator: what the GPU sees taken) and
    peak (allocated, at most, since start-up or the last reset)."""
    if device.type != "cuda":
        return None
    return {
        "allocated": int(torch.cuda.memory_allocated(device)),
        "reserved": int(torch.cuda.memory_reserved(device)),
        "peak": int(torch.cuda.max_memory_allocated(device)),
    }
