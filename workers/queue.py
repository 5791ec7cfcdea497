"""The queue vocabulary shared by the gateway (enqueue, inspect, cancel) and the workers (sweep).

Jobs travel as JSON (rq's JSONSerializer): a function path plus one payload dict of ids and numbers.
A job's `meta` holds `kind`, `model`, `progress` and, after an engine error, `error` ({code, message}).
A running job is stopped cooperatively: the gateway sets `stop_key(job_id)`, the worker checks it between
optimisation steps (rq's SimpleWorker cannot kill its own job).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import BaseModel
from redis import Redis
from rq import Queue, Retry, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker_registration import clean_worker_registry

from schemas.edits import InvertResult, OptimizeEditResult, VectorEditResult
from schemas.errors import ErrorBody, ErrorCode
from schemas.jobs import JobInfo, JobKind, JobProgress, JobStatus
from schemas.settings import Settings
from workers.store import PREFIX, ForbiddenError

log = logging.getLogger(__name__)

FUNCTIONS = {
    JobKind.invert: "workers.jobs.run_invert",
    JobKind.optimize: "workers.jobs.run_optimize",
    JobKind.refine: "workers.jobs.run_refine",
}
RESULTS: dict[JobKind, type[BaseModel]] = {
    JobKind.invert: InvertResult,
    JobKind.optimize: OptimizeEditResult,
    JobKind.refine: VectorEditResult,
}


class JobNotFoundError(LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} does not exist or has expired")


class JobNotCancellableError(ValueError):
    pass


def stop_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:stop"


def events_channel(job_id: str) -> str:
    """The pub/sub channel on which a job's changes are announced (`announce`): progress written, the job
    over, requeued or cancelled. `GET /jobs/{id}?wait=` listens on it."""
    return f"{PREFIX}:job:{job_id}:events"


def announce(redis: Redis, job_id: str) -> None:
    """Tell waiting readers that the job changed (after the change is in Redis). Best effort: a reader that
    misses it still answers at the end of its wait, so a failure here must never fail the job."""
    try:
        redis.publish(events_channel(job_id), b"1")
    except Exception:
        log.warning("could not announce a change of job %s", job_id, exc_info=True)


def queue_name(settings: Settings, model: str) -> str:
    """The queue of `model`'s jobs: `EDITGAN_QUEUE:<model>`. One queue per model, so that a worker takes only
    jobs for models it has loaded, and fleets of workers can serve different models behind one gateway."""
    return f"{settings.editgan_queue}:{model}"


def job_queue(redis: Redis, settings: Settings, model: str) -> Queue:
    return Queue(queue_name(settings, model), connection=redis, serializer=JSONSerializer)


def enqueue(
    queue: Queue, settings: Settings, kind: JobKind, model: str, payload: dict[str, Any], owner: str | None = None
) -> Job:
    """Queue one job; failures of a dying worker are retried `EDITGAN_JOB_RETRIES` times.

    `owner` (API keys on) goes into the meta, so only its key reads the job, and into the payload, so the
    worker stores the job's latents and images as that owner's.
    """
    meta: dict[str, Any] = {"kind": kind.value, "model": model, "progress": JobProgress().model_dump()}
    if owner is not None:
        meta["owner"], payload = owner, payload | {"owner": owner}
    return queue.enqueue(
        FUNCTIONS[kind],
        payload,
        job_timeout=settings.editgan_job_timeout,
        result_ttl=settings.editgan_result_ttl,
        failure_ttl=settings.editgan_result_ttl,
        ttl=settings.editgan_result_ttl,  # longest wait in the queue
        retry=Retry(max=settings.editgan_job_retries) if settings.editgan_job_retries else None,
        meta=meta,
    )


def fetch(redis: Redis, job_id: str, owner: str | None = None) -> Job:
    """The job; ForbiddenError when it was submitted with another API key than `owner`'s."""
    try:
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:
        raise JobNotFoundError(job_id) from None
    if job.meta.get("owner") not in (None, owner):
        raise ForbiddenError("job", job_id)
    return job


def _error(job: Job, status: JobStatus) -> ErrorBody | None:
    if status == JobStatus.stopped:
        return ErrorBody(code=ErrorCode.cancelled, message="the job was stopped on request")
    if status != JobStatus.failed:
        return None
    if "error" in job.meta:
        return ErrorBody.model_validate(job.meta["error"])
    latest = job.latest_result()
    text = (latest.exc_string if latest is not None else None) or ""
    if "AbandonedJobError" in text:
        return ErrorBody(code=ErrorCode.worker_lost, message="the worker running this job stopped responding")
    if "JobTimeoutException" in text:
        return ErrorBody(code=ErrorCode.job_failed, message="the job ran past its time limit")
    last = text.strip().splitlines()[-1] if text.strip() else "unknown failure"
    return ErrorBody(code=ErrorCode.job_failed, message=last)


def job_info(job: Job) -> JobInfo:
    """rq's view of a job in the API's words (status words are rq's own)."""
    status = JobStatus(job.get_status(refresh=False))
    kind = JobKind(job.meta.get("kind", "invert"))
    result: BaseModel | None = None
    if status == JobStatus.finished:
        value = job.return_value()
        if value is not None:
            result = RESULTS[kind].model_validate(value)
    return JobInfo(
        job_id=job.id,
        kind=kind,
        model=job.meta.get("model", ""),
        status=status,
        # queued again (a retry after its worker was lost): what the lost run reached no longer applies
        progress=JobProgress()
        if status == JobStatus.queued
        else JobProgress.model_validate(job.meta.get("progress", {})),
        queue_position=job.get_position() if status == JobStatus.queued else None,
        created_at=job.created_at,
        started_at=job.started_at,
        ended_at=job.ended_at,
        result=result,
        error=_error(job, status),
    )


def cancel(redis: Redis, job: Job, stop_ttl: int) -> JobStatus:
    """Cancel a queued job now; ask a running one to stop at its next step. Returns the status to expect."""
    status = JobStatus(job.get_status())
    if status in (JobStatus.queued, JobStatus.deferred, JobStatus.scheduled):
        # The stop key first: a worker may take the job between the status read and the cancel, and rq then
        # starts it all the same; it stops at its first step instead of running to the end.
        redis.set(stop_key(job.id), b"1", ex=stop_ttl)
        job.cancel()
        announce(redis, job.id)
        return JobStatus.canceled
    if status == JobStatus.started:
        redis.set(stop_key(job.id), b"1", ex=stop_ttl)
        return JobStatus.stopped
    raise JobNotCancellableError(f"job {job.id} is {status.value}: only queued or running jobs can be cancelled")


def live_workers(queue: Queue) -> int:
    """Workers listening on `queue` whose worker key is still alive. A worker killed without deregistering
    (SIGKILL, a lost machine) leaves its id in rq's set of workers after its key expires, and rq prunes it
    only in a live worker's maintenance: with none left it would be counted for ever."""
    clean_worker_registry(queue)
    return Worker.count(queue=queue)


def sweep_lost_jobs(redis: Redis, queue_name: str) -> None:
    """Fail (or retry) started jobs whose worker stopped refreshing their heartbeat.

    Workers keep each running job's entry in rq's started registry alive with a short TTL
    (EDITGAN_HEARTBEAT_TTL); rq's own cleanup then treats expired entries as abandoned jobs. Run often
    (the gateway every few seconds) instead of rq's 10-minute maintenance.
    """
    registry = StartedJobRegistry(queue_name, connection=redis, serializer=JSONSerializer)
    now = time.time()
    lost = registry.get_expired_job_ids(now)
    registry.cleanup(now)
    for job_id in lost:  # failed with `worker_lost`, or queued again for a retry: waiting readers answer now
        announce(redis, job_id)
