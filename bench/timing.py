"""Small measuring tools shared by the sections: percentiles, step clocks, resident memory."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """Count, mean and percentiles (p50, p95, p99) of durations given in seconds, in milliseconds."""
    if not seconds:
        return {"n": 0}
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "n": len(seconds),
        "mean_ms": round(float(ms.mean()), 3),
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "p99_ms": round(float(p99), 3),
    }


def sync() -> None:
    """Wait for queued GPU work, so that a clock read after a call covers it (CUDA runs asynchronously): on
    every GPU, since `synchronize()` alone waits for the current one (cuda:0), not the one measured."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)


def repeat(fn: Callable[[], Any], n: int, *, warmup: int = 2) -> list[float]:
    """Durations of `n` calls of `fn` (seconds), after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - start)
    return out


class StepClock:
    """An engine `progress` callback that timestamps every step; `per_step` is the median update time."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.first: dict[str, float] = {}  # the losses of the first iterate
        self.last: dict[str, float] = {}

    def __call__(self, step: int, total: int, losses: dict[str, float]) -> None:
        sync()  # mostly a no-op: the loop has already read its losses as floats
        self.stamps.append(time.perf_counter())
        self.first = self.first or losses
        self.last = losses

    @property
    def per_step(self) -> float:
        """Seconds per update: median gap between consecutive progress calls (each gap is one update)."""
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
        return statistics.median(gaps) if gaps else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result, seconds) of one call."""
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - start


def peak_rss_bytes(pid: int) -> int | None:
    """A process's peak resident memory: the kernel's high-water mark (VmHWM) where /proc has it, else
    its current RSS (a lower bound). None once the process is gone."""
    status = Path(f"/proc/{pid}/status")
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return int(psutil.Process(pid).memory_info().rss)
    except (OSError, psutil.Error):
        return None


@contextmanager
def rss_peak(interval: float = 0.05) -> Iterator[dict[str, int]]:
    """Peak resident memory of this process during the block (sampled), in `result["peak_bytes"]`.

    Sampling rather than VmHWM because the high-water mark also holds whatever earlier sections used.
    """
    me = psutil.Process()
    result = {"start_bytes": int(me.memory_info().rss), "peak_bytes": 0}
    done = threading.Event()

    def sample() -> None:
        while True:
            result["peak_bytes"] = max(result["peak_bytes"], int(me.memory_info().rss))
            if done.wait(interval):
                return

    thread = threading.Thread(target=sample, daemon=True, name="rss-sampler")
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        result["peak_bytes"] = max(result["peak_bytes"], int(me.memory_info().rss))


def gib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**30, 3)


def relative(a: float, b: float) -> float:
    """|a - b| / |b| to 3 significant digits: how far `a` lies from the reference `b`."""
    return float(f"{abs(a - b) / max(abs(b), 1e-12):.3g}")


def ratio(a: float, b: float, digits: int = 3) -> float | None:
    """a / b rounded, None when b is 0 or either is not finite."""
    if not (np.isfinite(a) and np.isfinite(b)) or b == 0:
        return None
    return round(a / b, digits)
