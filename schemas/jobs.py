"""Job contracts: what `POST` answers with `202`, and what `GET /jobs/{id}` returns."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from schemas.edits import InvertResult, OptimizeEditResult, VectorEditResult
from schemas.errors import ErrorBody


class JobStatus(StrEnum):
    """rq's own status words, unchanged (rq spells `canceled`; a running job stopped on request is `stopped`)."""

    queued = "queued"
    started = "started"
    finished = "finished"
    failed = "failed"
    deferred = "deferred"
    scheduled = "scheduled"
    stopped = "stopped"
    canceled = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.finished, JobStatus.failed, JobStatus.stopped, JobStatus.canceled)


class JobKind(StrEnum):
    invert = "invert"
    optimize = "optimize"
    refine = "refine"


class JobProgress(BaseModel):
    """Where a job is; updated by the worker between optimisation steps."""

    stage: str = Field("queued", description="queued, loading, optimizing, rendering or storing.")
    step: int = Field(0, ge=0, description="Optimisation updates done.")
    total: int = Field(0, ge=0, description="Optimisation updates planned.")
    losses: dict[str, float] = Field(default_factory=dict, description="Loss terms at the last step.")


class JobAccepted(BaseModel):
    """Body of a `202 Accepted`: poll `location` until `status` is terminal."""

    job_id: str
    kind: JobKind
    model: str
    status: JobStatus
    location: str = Field(description="URL of the job, also sent as the Location header.")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "job_id": "5f0c6e4b-8d2a-4a57-9a57-0d6f3f6f2c11",
                    "kind": "invert",
                    "model": "demo-faces",
                    "status": "queued",
                    "location": "/jobs/5f0c6e4b-8d2a-4a57-9a57-0d6f3f6f2c11",
                }
            ]
        }
    }


class JobInfo(BaseModel):
    """A job's state, progress and, once terminal, its result or error."""

    job_id: str
    kind: JobKind
    model: str
    status: JobStatus
    progress: JobProgress
    queue_position: int | None = Field(None, description="0 = next to run; only while queued.")
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    result: InvertResult | OptimizeEditResult | VectorEditResult | None = None
    error: ErrorBody | None = None

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "job_id": "5f0c6e4b-8d2a-4a57-9a57-0d6f3f6f2c11",
                    "kind": "optimize",
                    "model": "demo-faces",
                    "status": "started",
                    "progress": {"stage": "optimizing", "step": 12, "total": 40, "losses": {"total": 0.41, "ce": 0.2}},
                    "queue_position": None,
                    "result": None,
                    "error": None,
                }
            ]
        }
    }
