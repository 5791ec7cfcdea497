"""The one error body every 4xx/5xx answer carries, the machine-readable codes, and the readiness answer."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorCode(StrEnum):
    """Stable codes clients can branch on (the message is for people and may change)."""

    invalid_input = "invalid_input"  # a value breaks a documented rule (engine.InputError)
    validation_error = "validation_error"  # request shape or field constraint (pydantic)
    malformed_body = "malformed_body"  # the body cannot be parsed: malformed JSON or multipart (400)
    unsupported_media_type = "unsupported_media_type"  # upload is not PNG, JPEG or WebP, or not decodable
    payload_too_large = "payload_too_large"  # body or image over the configured limits
    unknown_model = "unknown_model"
    latent_not_found = "latent_not_found"  # never existed or expired (TTL)
    image_not_found = "image_not_found"
    vector_not_found = "vector_not_found"
    vector_read_only = "vector_read_only"  # vectors shipped inside a bundle cannot be replaced or deleted
    job_not_found = "job_not_found"
    job_not_cancellable = "job_not_cancellable"  # already finished, failed or stopped
    model_mismatch = "model_mismatch"  # latent or vector of another model
    unauthorized = "unauthorized"  # API keys are on and the request carries none (401)
    forbidden = "forbidden"  # wrong API key, or the job, latent or image belongs to another key (403)
    rate_limited = "rate_limited"  # over EDITGAN_RATE_LIMIT; see Retry-After (429)
    queue_full = "queue_full"  # over EDITGAN_MAX_QUEUED_JOBS or EDITGAN_MAX_QUEUED_PER_KEY; see Retry-After (429)
    idempotency_key_reused = "idempotency_key_reused"  # same Idempotency-Key, different request (422)
    idempotency_in_progress = "idempotency_in_progress"  # the first request with this key is still running (409)
    not_found = "not_found"  # unknown route
    method_not_allowed = "method_not_allowed"
    unavailable = "unavailable"  # Redis unreachable or no model loaded; retry later
    storage_unavailable = "storage_unavailable"  # Redis refuses writes (disk full, read-only, out of memory)
    cancelled = "cancelled"
    job_failed = "job_failed"  # a job raised something other than an engine error
    worker_lost = "worker_lost"  # the job's worker stopped refreshing its heartbeat
    internal_error = "internal_error"


class ErrorBody(BaseModel):
    """`{code, message}`: the body of every error response and of a failed job's `error`."""

    code: ErrorCode = Field(description="Machine-readable error code.")
    message: str = Field(description="What went wrong and, where possible, how to fix it.")
    detail: Any | None = Field(None, description="Structured extra information (e.g. pydantic's field errors).")


class Readiness(BaseModel):
    """`GET /readyz`: ready (200), degraded (200: a model has no live worker, so its jobs wait, or Redis
    refuses writes, so only reads work) or not ready (503: no model loaded or Redis unreachable, with `code`
    and `message` as every error, and Retry-After)."""

    status: Literal["ready", "degraded", "not_ready"]
    checks: dict[str, bool | int] = Field(
        description="models loaded, Redis answering, live workers (the fewest on any model's queue), Redis "
        "accepting writes"
    )
    code: ErrorCode | None = Field(None, description="`unavailable` when not ready.")
    message: str | None = Field(None, description="Which checks failed (not ready), or why degraded.")
    unserved_models: list[str] | None = Field(
        None, description="Models no live worker serves (degraded): their jobs wait in the queue until one starts."
    )
