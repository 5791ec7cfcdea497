"""Job statistics shared through Redis: workers write them, the gateway's /metrics reads them.

Every worker process increments the same hash, so any number of workers on one Redis add up to one
Prometheus-style histogram per job kind without a push gateway. Hash fields (key ``{prefix}:stats:jobs``):

    {kind}:le:{bound}      cumulative bucket: runs of this kind that took at most `bound` seconds
    {kind}:count           all runs of this kind (the +Inf bucket)
    {kind}:sum             total run time in seconds
    {kind}:status:{status} runs of this kind that ended in `status`

Changing BUCKETS orphans the old bucket fields (they are ignored on read): delete the key when you do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis import Redis

KINDS = ("invert", "optimize", "refine")
STATUSES = ("finished", "failed", "stopped", "requeued")

BUCKETS: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
)
"""Upper bounds in seconds: from a cached vector edit (tens of ms) to a long W+ optimisation (30 min)."""


def stats_key(prefix: str = "editgan") -> str:
    """The Redis hash holding the job statistics."""
    return f"{prefix}:stats:jobs"


def _bound(bound: float) -> str:
    # One spelling per bound, shared by writer and reader: 0.05 -> "0.05", 1800.0 -> "1800".
    return f"{bound:g}"


@dataclass(frozen=True)
class KindStats:
    """Run-time histogram and outcome counts of one job kind."""

    buckets: tuple[tuple[float, int], ...]  # cumulative (upper bound s, count), ending with (inf, count)
    sum: float  # seconds
    statuses: dict[str, int]  # every known status, zero when never seen

    @property
    def count(self) -> int:
        """Number of runs of this kind (the +Inf bucket)."""
        return self.buckets[-1][1]


@dataclass(frozen=True)
class JobStats:
    """Statistics of every known job kind, zeros included so that series exist from the first scrape."""

    kinds: dict[str, KindStats]


def record_job(redis: Redis, *, kind: str, status: str, seconds: float, prefix: str = "editgan") -> None:
    """Add one job run to the shared statistics, atomically (one MULTI/EXEC pipeline).

    Args:
        redis: connection to the queue's Redis.
        kind: one of KINDS.
        status: how the run ended, one of STATUSES (rq's spelling).
        seconds: wall-clock run time, finite and >= 0.
        prefix: key prefix shared with the gateway's reader.

    Raises:
        ValueError: unknown kind or status, or a negative or non-finite duration.
    """
    if kind not in KINDS:
        raise ValueError(f"job kind {kind!r} is unknown; expected one of {KINDS}")
    if status not in STATUSES:
        raise ValueError(f"job status {status!r} is unknown; expected one of {STATUSES}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"job duration {seconds!r} s must be finite and >= 0")
    key = stats_key(prefix)
    pipe = redis.pipeline(transaction=True)
    # Stored cumulatively, as Prometheus exposes it: a run lands in every bucket whose bound it fits under.
    for bound in BUCKETS:
        if seconds <= bound:
            pipe.hincrby(key, f"{kind}:le:{_bound(bound)}", 1)
    pipe.hincrby(key, f"{kind}:count", 1)
    pipe.hincrbyfloat(key, f"{kind}:sum", seconds)
    pipe.hincrby(key, f"{kind}:status:{status}", 1)
    pipe.execute()


def read_job_stats(redis: Redis, prefix: str = "editgan") -> JobStats:
    """Read the shared statistics back (one HGETALL, so a consistent snapshot).

    Works with clients created with or without ``decode_responses``.
    """
    raw = redis.hgetall(stats_key(prefix))
    fields = {_text(k): _text(v) for k, v in raw.items()}

    def number(field: str) -> int:
        return int(fields.get(field, "0"))

    kinds = {}
    for kind in KINDS:
        buckets = [(bound, number(f"{kind}:le:{_bound(bound)}")) for bound in BUCKETS]
        buckets.append((math.inf, number(f"{kind}:count")))
        kinds[kind] = KindStats(
            buckets=tuple(buckets),
            sum=float(fields.get(f"{kind}:sum", "0")),
            statuses={status: number(f"{kind}:status:{status}") for status in STATUSES},
        )
    return JobStats(kinds=kinds)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
