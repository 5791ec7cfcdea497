"""Bounds on queued work: in total (EDITGAN_MAX_QUEUED_JOBS) and per API key (EDITGAN_MAX_QUEUED_PER_KEY).

Past a bound, job requests get 429 with Retry-After instead of a place in a queue that would only grow.
Per key, the gateway keeps the set of the key's job ids and counts those not yet finished (queued or
running), pruning finished and expired ones on the way. Check, enqueue and count run under one Redis lock
shared by every gateway (`admission`), so the bounds are exact under concurrency: the lock is held for a
few milliseconds per submission, and expires by itself if its gateway dies holding it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from redis import Redis
from rq import Queue
from rq.job import Job

from schemas.errors import ErrorCode
from service.errors import ApiError
from workers.store import PREFIX, as_str

RETRY_AFTER = 10  # seconds: a job takes seconds to minutes, so sooner would only be refused again
UNFINISHED = {"queued", "started", "deferred", "scheduled"}


ADMISSION_KEY = f"{PREFIX}:admission"


@contextmanager
def admission(redis: Redis) -> Iterator[None]:
    """Serialise job admissions across gateways (a Redis lock; 503 if it cannot be had within 10 s)."""
    with redis.lock(ADMISSION_KEY, timeout=10, blocking_timeout=10):
        yield


def admit(
    redis: Redis,
    queue: Queue,
    owner: str | None,
    enqueue: Callable[[], Job],
    *,
    max_total: int,
    max_per_key: int,
    ttl: int,
) -> Job:
    """`enqueue()` within the bounds (429 past them), counted against `owner`; exact under concurrency."""
    with admission(redis):
        check_room(redis, queue, owner, max_total=max_total, max_per_key=max_per_key)
        job = enqueue()
        track(redis, owner, job.id, ttl)
        return job


def jobs_key(owner: str) -> str:
    return f"{PREFIX}:owner:{owner}:jobs"


def unfinished_jobs(redis: Redis, owner: str) -> int:
    """How many of the owner's jobs are queued or running; forgets the others."""
    key = jobs_key(owner)
    ids = [as_str(i) for i in redis.smembers(key)]
    if not ids:
        return 0
    with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(Job.key_for(job_id), "status")
        statuses = pipe.execute()
    done = [i for i, s in zip(ids, statuses, strict=True) if s is None or as_str(s) not in UNFINISHED]
    if done:
        redis.srem(key, *done)
    return len(ids) - len(done)


def check_room(redis: Redis, queue: Queue, owner: str | None, *, max_total: int, max_per_key: int) -> None:
    """Raise ApiError 429 when the queue, or this key's share of the work, is full."""
    if queue.count >= max_total:
        raise _full(f"the queue {queue.name} holds {max_total} jobs (EDITGAN_MAX_QUEUED_JOBS)")
    if owner is not None and unfinished_jobs(redis, owner) >= max_per_key:
        raise _full(f"this API key has {max_per_key} unfinished jobs (EDITGAN_MAX_QUEUED_PER_KEY)")


def track(redis: Redis, owner: str | None, job_id: str, ttl: int) -> None:
    """Count a new job against its owner; the set expires with the last job's results."""
    if owner is None:
        return
    with redis.pipeline() as pipe:
        pipe.sadd(jobs_key(owner), job_id)
        pipe.expire(jobs_key(owner), ttl)
        pipe.execute()


def _full(reason: str) -> ApiError:
    message = f"too many jobs: {reason}; retry later"
    return ApiError(429, ErrorCode.queue_full, message, {"Retry-After": str(RETRY_AFTER)})
