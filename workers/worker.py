"""`editgan worker`: an rq worker that keeps the models loaded and runs jobs in its own process.

Why a SimpleWorker subclass: rq's default worker forks a work-horse per job, which would reload (or lose,
for CUDA) the resident models. Without a horse rq cannot kill a job, so:
- cancellation is cooperative (the job's stop key, polled between optimisation steps);
- a heartbeat thread keeps the job's started-registry entry and the worker key alive with a short TTL
  (EDITGAN_HEARTBEAT_TTL), so a worker that dies is noticed by `sweep_lost_jobs` within that TTL instead
  of after rq's 10-minute maintenance; the job is then retried (EDITGAN_JOB_RETRIES) or failed;
- SIGTERM stops the current job at its next step and puts it back at the front of the queue, then exits.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

import torch
from redis import Redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from rq import SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.utils import now

from engine import EngineError
from schemas.settings import Settings
from workers.jobs import HANDLED, ShutdownRequestedError
from workers.models import check_precisions, compile_models, load_models, resolve_device, warn_cuda_graphs
from workers.queue import announce, job_queue, sweep_lost_jobs
from workers.registry import Registry
from workers.runtime import Runtime, install
from workers.stats import record_job
from workers.store import Store

log = logging.getLogger(__name__)
ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]


class EditganWorker(SimpleWorker):
    """SimpleWorker + heartbeat thread, cooperative stop, requeue on SIGTERM, job statistics."""

    def __init__(self, *args: Any, runtime: Runtime, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runtime = runtime
        self.heartbeat_ttl = runtime.settings.editgan_heartbeat_ttl

    # ------------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("worker %s: signal %s, stopping after the current step", self.name, signum)
        self.runtime.shutdown.set()  # the running job (if any) sees it at its next step
        self.request_stop(signum, frame)  # rq: exit now when idle, after the job when busy

    # ------------------------------------------------------------------ one job

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        done = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, done), daemon=True, name="heartbeat")
        beat.start()
        start = time.monotonic()
        try:
            self.perform_job(job, queue, execution)
        finally:
            done.set()
            beat.join()
            announce(self.connection, job.id)  # finished, failed, stopped or requeued: all in Redis by now
        self._record(job, time.monotonic() - start)
        self.set_state("idle")

    def _beat(self, job: Job, execution: Execution, done: threading.Event) -> None:
        """Refresh the worker key, the execution's registry entry and the job, every TTL/4 seconds."""
        while True:
            try:
                with self.connection.pipeline() as pipe:
                    self.heartbeat(self.heartbeat_ttl + 60, pipeline=pipe)
                    execution.heartbeat(job.started_job_registry, self.heartbeat_ttl, pipeline=pipe)
                    job.heartbeat(now(), self.heartbeat_ttl, pipeline=pipe, xx=True)
                    pipe.execute()
            except Exception:  # a Redis hiccup must not kill the job; the next beat retries
                log.warning("heartbeat of job %s failed", job.id, exc_info=True)
            if done.wait(self.heartbeat_ttl / 4):
                return

    def _finalize_failure(self, job: Job, queue: Queue, execution: Execution, exc_info: ExcInfo) -> None:
        exc = exc_info[1]
        if isinstance(exc, ShutdownRequestedError):
            self._requeue(job, queue, execution)
            return
        if isinstance(exc, HANDLED):  # what the job recorded as its {code, message}: the input's fault
            if isinstance(exc, EngineError) and exc.code == "cancelled":
                self._stopped_job_id = job.id  # rq then marks it `stopped`, never retried
            job.retries_left = 0  # deterministic failures (a deleted latent too) are not worth a retry
        super()._finalize_failure(job, queue, execution, exc_info)

    def _requeue(self, job: Job, queue: Queue, execution: Execution) -> None:
        """Back to the front of the queue, untouched retry budget: another worker starts it afresh."""
        job.meta["progress"] = {"stage": "queued", "step": 0, "total": 0, "losses": {}}
        job.meta["requeued"] = int(job.meta.get("requeued", 0)) + 1
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            job.save_meta()
            queue._enqueue_job(job, pipeline=pipe, at_front=True)
            pipe.execute()
        log.info("job %s requeued because the worker is shutting down", job.id)

    def _record(self, job: Job, seconds: float) -> None:
        value = JobStatus(job.get_status(refresh=True)).value
        status = "requeued" if value == "queued" else value
        kind = job.meta.get("kind", "invert")
        if status in ("finished", "failed", "stopped", "requeued"):
            try:
                record_job(self.connection, kind=kind, status=status, seconds=seconds)
            except Exception:
                log.warning("could not record statistics of job %s", job.id, exc_info=True)


def build_runtime(settings: Settings, redis: Redis) -> Runtime:
    if settings.editgan_threads:
        torch.set_num_threads(settings.editgan_threads)
    device = resolve_device(settings.editgan_device)
    only = settings.editgan_worker_models.split(",") if settings.editgan_worker_models else None
    bundles = load_models(settings.editgan_models_dir, device, only=only)
    check_precisions(bundles, settings.editgan_precision)  # before compiling: a refusal should not wait for it
    warn_cuda_graphs(bundles, settings.editgan_cuda_graphs)
    if settings.editgan_compile:
        compile_models(bundles, gradients=True, setting=settings.editgan_precision)
    return Runtime(
        settings=settings,
        redis=redis,
        bundles=bundles,
        store=Store(redis, settings.editgan_result_ttl),
        registry=Registry(redis),
    )


def worker_redis(url: str) -> Redis:
    """A connection that rides out a Redis restart or failover of up to about a minute.

    A worker's writes finish minutes of engine work (results, progress, the job's status), so it waits for
    Redis to come back instead of failing the job; the gateway, which answers people, fails fast with 503.
    """
    retry = Retry(ExponentialWithJitterBackoff(base=0.25, cap=4), retries=20)
    return Redis.from_url(url, retry=retry, socket_connect_timeout=2, health_check_interval=30)


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None) -> None:
    """Load the bundles (EDITGAN_WORKER_MODELS, else all), then work their queues until SIGTERM (or until
    they are empty with `burst`)."""
    if settings.redis_url is None:
        raise EngineError("the worker needs REDIS_URL (`editgan up` sets it for the worker it starts)")
    redis = worker_redis(settings.redis_url)
    runtime = build_runtime(settings, redis)
    install(runtime)
    queues = [job_queue(redis, settings, model) for model in runtime.bundles]
    for queue in queues:
        sweep_lost_jobs(redis, queue.name)  # jobs of a worker that died while nobody watched
    worker = EditganWorker(
        queues,
        connection=redis,
        serializer=JSONSerializer,
        worker_ttl=max(30, settings.editgan_heartbeat_ttl),
        name=name,
        runtime=runtime,
    )
    worker.work(burst=burst, logging_level=settings.editgan_log_level.upper(), with_scheduler=False)
