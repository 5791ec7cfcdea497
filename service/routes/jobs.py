"""`GET /jobs/{id}` (status, progress, result or error) and `DELETE /jobs/{id}` (cancel)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from schemas.jobs import JobInfo
from service.deps import ServicesDep
from service.routes.common import ERRORS
from workers.queue import cancel, fetch, job_info

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERRORS)
JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The id `POST` answered with.")]


@router.get("/{job_id}", response_model=JobInfo)
def get_job(services: ServicesDep, job_id: JobId) -> JobInfo:
    """A job's rq status, its progress (step/total, losses) and, once terminal, its result or error."""
    return job_info(fetch(services.redis, job_id, services.owner))


@router.delete("/{job_id}", response_model=JobInfo, responses={409: ERRORS[422] | {"description": "Job is over."}})
def cancel_job(services: ServicesDep, job_id: JobId) -> JobInfo:
    """Cancel a queued job (`canceled`) or stop a running one at its next step (`stopped` shortly after)."""
    job = fetch(services.redis, job_id, services.owner)
    cancel(services.redis, job, stop_ttl=services.settings.editgan_job_timeout + 60)
    return job_info(fetch(services.redis, job_id, services.owner))
