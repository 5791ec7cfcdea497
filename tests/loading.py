"""A bounded load on a running service: many concurrent clients mixing synchronous vector edits and job
submissions, then a drain that waits for every accepted job. Used by scripts/load.py (in full) and by
tests/service/test_load.py (small). Loopback only: it is a test harness, not a traffic generator.

What it measures: every answer's status (anything but 200, 201, 202 and a deliberate 429 counts as failed),
the latency of the synchronous vector edits, how many accepted jobs reach a terminal state (the others are
lost), and the resident memory of the gateway and the workers after a warm-up, after the load and after the
drain (flat memory: no growth once warm).
"""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import psutil
from PIL import Image

OK = (200, 201, 202)
TERMINAL = ("finished", "failed", "stopped", "canceled")


@dataclass
class LoadConfig:
    clients: int = 200
    seconds: float = 60.0
    warmup_seconds: float = 10.0  # the same load, before memory is first read; not counted in the results
    job_share: float = 0.1  # share of requests that submit an inversion job (the rest are vector edits)
    job_steps: int = 5
    drain_timeout: float = 600.0
    seed: int = 0


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    vector_ms: list[float] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    counting: bool = False

    def record(self, kind: str, response: httpx.Response | None, error: str = "") -> None:
        if not self.counting:
            return
        status = response.status_code if response is not None else 0
        self.statuses[f"{kind} {status}"] += 1
        if status not in OK and status != 429:
            body = response.text[:200] if response is not None else error
            self.failures.append(f"{kind} {status}: {body}")


def small_png(seed: int, size: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def rss_mib(pids: dict[str, int]) -> dict[str, float]:
    """Resident memory of each named process and its children (uvicorn or a worker may fork helpers)."""
    out = {}
    for name, pid in pids.items():
        proc = psutil.Process(pid)
        total = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
        out[name] = round(total / 2**20, 1)
    return out


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if values else float("nan")


async def _client(
    index: int, http: httpx.AsyncClient, cfg: LoadConfig, until: float, target: dict[str, Any], tally: Tally
) -> None:
    rng = random.Random(cfg.seed * 100_003 + index)
    image = small_png(index)
    while time.monotonic() < until:
        try:
            if rng.random() < cfg.job_share:
                r = await http.post("/invert", files={"image": ("i.png", image)}, data={"steps": str(cfg.job_steps)})
                tally.record("invert", r)
                if r.status_code == 202:
                    tally.jobs.append(r.headers["Location"])
                elif r.status_code == 429:
                    await asyncio.sleep(min(float(r.headers.get("Retry-After", "1")), 2.0))
            else:
                body = {
                    "latent_id": target["latent_id"],
                    "vectors": [{"vector": target["vector"], "scale": rng.uniform(-1.5, 1.5)}],
                }
                start = time.perf_counter()
                r = await http.post("/edit/vector", json=body)
                if tally.counting and r.status_code == 200:
                    tally.vector_ms.append((time.perf_counter() - start) * 1000)
                tally.record("vector", r)
                if r.status_code == 429:
                    await asyncio.sleep(min(float(r.headers.get("Retry-After", "1")), 2.0))
        except httpx.HTTPError as exc:  # refused or dropped connections are failures, not skipped
            tally.record("transport", None, repr(exc))


async def _drain(http: httpx.AsyncClient, jobs: list[str], timeout: float) -> dict[str, int]:
    """Wait for every accepted job; returns how many ended in each terminal state, and how many did not."""
    outcome: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    pending = list(jobs)
    while pending and time.monotonic() < deadline:
        still = []
        for location in pending:
            r = await http.get(location)
            status = r.json().get("status") if r.status_code == 200 else f"http {r.status_code}"
            if status in TERMINAL:
                outcome[status] += 1
            elif r.status_code == 200:
                still.append(location)
            else:
                outcome["lost"] += 1  # the job vanished: its id no longer answers
        pending = still
        if pending:
            await asyncio.sleep(0.5)
    outcome["lost"] += len(pending)
    return dict(outcome)


async def _run(base_url: str, cfg: LoadConfig, pids: dict[str, int], vector: str, model: str) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=cfg.clients + 8, max_keepalive_connections=cfg.clients + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as http:
        sample = await http.post("/latents/sample", json={"model": model, "seed": cfg.seed})
        sample.raise_for_status()
        target = {"latent_id": sample.json()["latent_id"], "vector": vector}
        tally = Tally()

        async def phase(seconds: float) -> None:
            until = time.monotonic() + seconds
            await asyncio.gather(*(_client(i, http, cfg, until, target, tally) for i in range(cfg.clients)))

        await phase(cfg.warmup_seconds)
        warm_jobs = list(tally.jobs)
        memory = {"after_warmup": rss_mib(pids)}
        tally.counting, tally.jobs = True, []
        start = time.monotonic()
        trace: list[dict[str, float]] = []

        async def sample() -> None:  # the trend shows whether memory levels off or keeps climbing
            while True:
                await asyncio.sleep(cfg.seconds / 6)
                trace.append({"t": round(time.monotonic() - start, 1)} | rss_mib(pids))

        sampler = asyncio.create_task(sample())
        await phase(cfg.seconds)
        sampler.cancel()
        elapsed = time.monotonic() - start
        tally.counting = False
        memory["after_load"] = rss_mib(pids)
        drain_start = time.monotonic()
        outcome = await _drain(http, tally.jobs + warm_jobs, cfg.drain_timeout)
        drain_seconds = time.monotonic() - drain_start
        await asyncio.sleep(2.0)
        memory["after_drain"] = rss_mib(pids)

    growth = {n: round(memory["after_drain"][n] - memory["after_warmup"][n], 1) for n in pids}
    requests = sum(tally.statuses.values())
    return {
        "clients": cfg.clients,
        "seconds": round(elapsed, 1),
        "requests": requests,
        "requests_per_s": round(requests / elapsed, 1),
        "statuses": dict(sorted(tally.statuses.items())),
        "failed": len(tally.failures),
        "failures": tally.failures[:10],
        "rate_limited": sum(v for k, v in tally.statuses.items() if k.endswith(" 429")),
        "vector_edit_ms": {
            "count": len(tally.vector_ms),
            "p50": percentile(tally.vector_ms, 50),
            "p95": percentile(tally.vector_ms, 95),
            "p99": percentile(tally.vector_ms, 99),
        },
        "jobs": {"accepted": len(tally.jobs) + len(warm_jobs), "drain_seconds": round(drain_seconds, 1)} | outcome,
        "lost": outcome.get("lost", 0),
        "memory_mib": memory,
        "memory_trace_mib": trace,
        "memory_growth_mib": growth,
    }


def run_load(base_url: str, cfg: LoadConfig, pids: dict[str, int], *, vector: str, model: str) -> dict[str, Any]:
    """Run the load against `base_url`; `pids` names the processes whose memory is read (gateway, workers)."""
    return asyncio.run(_run(base_url, cfg, pids, vector, model))
