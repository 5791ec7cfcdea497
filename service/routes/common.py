"""Small helpers shared by the routers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header, Response
from redis import Redis
from rq.job import Job

from schemas.errors import ErrorBody, ErrorCode
from schemas.jobs import JobAccepted, JobKind, JobStatus
from service import backpressure, idempotency
from service.errors import ApiError
from service.idempotency import Idempotency
from service.state import Services
from workers.queue import JobNotFoundError, enqueue, fetch

# OpenAPI: the error bodies every route may answer with.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "The body cannot be parsed: malformed JSON or multipart."),
        (401, "API keys are on and the request carries none."),
        (403, "The API key is not valid, or the job, latent or image belongs to another key."),
        (404, "Unknown model, latent, vector, image or job."),
        (413, "Upload over the size or pixel limit."),
        (415, "Upload is not an accepted image format or is corrupt."),
        (422, "Invalid request or input (see `code` and `message`)."),
        (429, "Rate limit or queue bound reached; see Retry-After."),
        (503, "Redis unreachable or models not loaded; retry later."),
    )
}

RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
for _status in (429, 503):
    ERRORS[_status]["headers"] = RETRY_AFTER

# Routes that queue a job (Idempotency-Key) or name a registry vector may also answer 409.
CONFLICTS: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ErrorBody,
        "description": "`idempotency_in_progress`: a request with this Idempotency-Key is still being queued "
        "(see Retry-After); `vector_read_only`: the name belongs to a vector shipped with the model.",
        "headers": RETRY_AFTER,
    }
}

# The headers of a created job (202) or vector (201).
LOCATION = {"Location": {"description": "The new job's or vector's URL.", "schema": {"type": "string"}}}
ACCEPTED_HEADERS = LOCATION | {
    "Idempotent-Replayed": {
        "description": "`true` when this answer replays the job an earlier request with the same key created.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def check_steps(steps: int | None, services: Services) -> None:
    limit = services.settings.editgan_max_steps
    if steps is not None and steps > limit:
        raise ApiError(422, ErrorCode.invalid_input, f"steps must be <= {limit} (EDITGAN_MAX_STEPS), got {steps}")


def _idempotency_header(description: str) -> Any:  # fastapi.Header is typed as returning Any
    return Header(alias="Idempotency-Key", pattern=idempotency.HEADER_PATTERN, description=description)


IdempotencyKey = Annotated[
    str | None,
    _idempotency_header("Retrying with the same key returns the job the first request created (not a second job)."),
]
# `POST /edit/vector` makes a job only with refinement; a real-time edit is answered at once, nothing to replay
RefineIdempotencyKey = Annotated[
    str | None,
    _idempotency_header(
        "With `refine_steps` > 0: retrying with the same key returns the job the first request created. A "
        "real-time edit does not use it: a retry renders again and stores a second result (new ids)."
    ),
]


def submit(
    services: Services,
    response: Response,
    kind: JobKind,
    model: str,
    payload: dict[str, Any] | Callable[[], dict[str, Any]],
    idem: Idempotency | None = None,
) -> JobAccepted:
    """Queue a job (within the queue bounds, once per Idempotency-Key) and describe it as a 202 with its Location.

    `payload` may be a function: called only when the request goes ahead (not for a replay), after the key
    is reserved, so that what it reads (a vector's latest version) cannot change what a retry is matched on."""
    redis, owner, settings = services.redis, services.owner, services.settings
    replay = idempotency.reserve(redis, owner, idem) if idem else None
    if replay is not None:
        response.headers["Idempotent-Replayed"] = "true"
        accepted = _current(redis, owner, replay)
    else:
        try:
            body = payload() if callable(payload) else payload
            queue = services.queues[model]
            job: Job = backpressure.admit(
                redis,
                queue,
                owner,
                lambda: enqueue(queue, settings, kind, model, body, owner),
                max_total=settings.editgan_max_queued_jobs,
                max_per_key=settings.editgan_max_queued_per_key,
                ttl=settings.editgan_result_ttl,
            )
        except BaseException:
            if idem:
                idempotency.release(redis, owner, idem)
            raise
        location = f"/jobs/{job.id}"
        accepted = JobAccepted(job_id=job.id, kind=kind, model=model, status=JobStatus.queued, location=location)
        if idem:
            idempotency.record(redis, owner, idem, accepted, settings.editgan_result_ttl)
    response.status_code = 202
    response.headers["Location"] = accepted.location
    return accepted


def _current(redis: Redis, owner: str | None, accepted: JobAccepted) -> JobAccepted:
    """A replayed answer with the job's status now (it may have finished since), as recorded if the job has
    expired meanwhile."""
    try:
        status = fetch(redis, accepted.job_id, owner).get_status(refresh=False)
    except JobNotFoundError:
        return accepted
    return accepted.model_copy(update={"status": JobStatus(status)})
