"""`GET /jobs/{id}` (status, progress, result or error; with `wait`, a long poll) and `DELETE /jobs/{id}`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool

from schemas.jobs import JobInfo
from service.deps import ServicesDep
from service.routes.common import ERRORS
from service.state import Services
from workers.queue import cancel, fetch, job_info

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERRORS)
JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The id `POST` answered with.")]
MAX_WAIT = 30.0  # seconds: under the usual 60 s idle timeouts of proxies and load balancers
Wait = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_WAIT,
        description="Seconds to hold the answer until the job next changes (progress, status): a long poll. "
        "A job already over answers at once; 0 answers at once in any case.",
    ),
]


def _read(services: Services, job_id: str) -> JobInfo:
    return job_info(fetch(services.redis, job_id, services.owner))


@router.get("/{job_id}", response_model=JobInfo)
async def get_job(services: ServicesDep, job_id: JobId, wait: Wait = 0.0) -> JobInfo:
    """A job's rq status, its progress (step/total, losses) and, once terminal, its result or error.

    With `wait`, the answer comes when the job next changes (the worker writes progress a few times a
    second and announces the job's end), or after `wait` seconds: a client that asks again with each answer
    sees every change as it happens, with no polling interval, and a finished job at once. The gateway's one
    subscription to all announcements wakes the readers (`service.job_events`): an open long poll holds no
    Redis connection of its own.
    """
    if wait <= 0 or services.job_events is None or services.job_events.closing:
        return await run_in_threadpool(_read, services, job_id)
    # Watched before the read: a change between the two is not lost, it ends the wait at once.
    async with services.job_events.watch(job_id) as changed:
        info = await run_in_threadpool(_read, services, job_id)  # 404/403 here, before any waiting
        if info.status.is_terminal:
            return info
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), wait)
    return await run_in_threadpool(_read, services, job_id)


@router.delete("/{job_id}", response_model=JobInfo, responses={409: ERRORS[422] | {"description": "Job is over."}})
def cancel_job(services: ServicesDep, job_id: JobId) -> JobInfo:
    """Cancel a queued job (`canceled`) or stop a running one at its next step (`stopped` shortly after)."""
    job = fetch(services.redis, job_id, services.owner)
    cancel(services.redis, job, stop_ttl=services.settings.editgan_job_timeout + 60)
    return job_info(fetch(services.redis, job_id, services.owner))
