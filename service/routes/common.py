"""Small helpers shared by the routers."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from rq.job import Job

from schemas.errors import ErrorBody, ErrorCode
from schemas.jobs import JobAccepted, JobKind, JobStatus
from service.errors import ApiError
from service.state import Services
from workers.queue import enqueue

# OpenAPI: the error bodies every route may answer with.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (404, "Unknown model, latent, vector, image or job."),
        (413, "Upload over the size or pixel limit."),
        (415, "Upload is not an accepted image format or is corrupt."),
        (422, "Invalid request or input (see `code` and `message`)."),
        (503, "Redis unreachable or models not loaded; retry later."),
    )
}


def check_steps(steps: int | None, services: Services) -> None:
    limit = services.settings.editgan_max_steps
    if steps is not None and steps > limit:
        raise ApiError(422, ErrorCode.invalid_input, f"steps must be <= {limit} (EDITGAN_MAX_STEPS), got {steps}")


def submit(services: Services, response: Response, kind: JobKind, model: str, payload: dict[str, Any]) -> JobAccepted:
    """Queue a job and describe it as a 202 with its Location."""
    job: Job = enqueue(services.queue, services.settings, kind, model, payload)
    location = f"/jobs/{job.id}"
    response.status_code = 202
    response.headers["Location"] = location
    return JobAccepted(job_id=job.id, kind=kind, model=model, status=JobStatus.queued, location=location)
