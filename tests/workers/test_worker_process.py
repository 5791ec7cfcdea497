"""Real `editgan worker` processes: shutdown, death and cooperative stop, against a real Redis."""

from __future__ import annotations

import io
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from PIL import Image
from rq.job import Job

from engine.precision import native_precisions
from schemas.jobs import JobKind
from schemas.settings import Settings
from tests.conftest import save_tiny_model
from tests.processes import start, stop
from workers.queue import (
    enqueue,
    events_channel,
    fetch,
    job_info,
    job_queue,
    queue_name,
    stop_key,
    sweep_lost_jobs,
)
from workers.stats import read_job_stats
from workers.store import Store

HEARTBEAT = 4  # seconds: a dead worker's job is noticed this fast


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models"))


@pytest.fixture
def settings(redis_url: str, models: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        editgan_models_dir=models,
        editgan_heartbeat_ttl=HEARTBEAT,
        editgan_threads=1,
        editgan_job_retries=0,
    )


@pytest.fixture
def spawn(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., object]]:
    procs = []
    log = tmp_path / "worker.log"

    def spawn_worker(**extra: str) -> object:
        env = {
            "REDIS_URL": str(settings.redis_url),
            "EDITGAN_MODELS_DIR": str(settings.editgan_models_dir),
            "EDITGAN_HEARTBEAT_TTL": str(HEARTBEAT),
            "EDITGAN_THREADS": "1",
            "EDITGAN_LOG_LEVEL": "info",
        } | extra
        proc = start(["worker"], env, log)
        procs.append(proc)
        return proc

    yield spawn_worker
    for proc in procs:
        stop(proc)


def submit_long_inversion(redis_client: redis.Redis, settings: Settings, steps: int = 3000) -> Job:
    canvas = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    upload = Store(redis_client, settings.editgan_result_ttl).put_png(buf.getvalue(), kind="upload")
    payload = {"model": "tiny", "upload_id": upload, "steps": steps}
    return enqueue(job_queue(redis_client, settings, "tiny"), settings, JobKind.invert, "tiny", payload)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def progress_step(redis_client: redis.Redis, job: Job) -> int:
    refreshed = fetch(redis_client, job.id)
    return int(refreshed.meta["progress"]["step"]) if refreshed.get_status() == "started" else -1


def test_sigterm_requeues_the_running_job_and_another_worker_takes_it(
    redis_client: redis.Redis, settings: Settings, spawn: Callable[..., object]
) -> None:
    job = submit_long_inversion(redis_client, settings)
    first = spawn()
    wait_for(lambda: progress_step(redis_client, job) > 0, 90, "the first worker to start the job")
    first.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
    assert first.wait(30) == 0  # type: ignore[attr-defined]
    requeued = fetch(redis_client, job.id)
    assert requeued.get_status() == "queued" and requeued.meta["requeued"] == 1
    assert job_queue(redis_client, settings, "tiny").job_ids == [job.id]

    spawn()
    wait_for(lambda: progress_step(redis_client, job) > 0, 90, "the second worker to start the job")
    redis_client.set(stop_key(job.id), b"1")  # cooperative stop between two steps
    wait_for(lambda: fetch(redis_client, job.id).get_status() == "stopped", 20, "the job to stop")


def test_a_killed_workers_job_is_failed_within_the_heartbeat_ttl(
    redis_client: redis.Redis, settings: Settings, spawn: Callable[..., object]
) -> None:
    job = submit_long_inversion(redis_client, settings)
    worker = spawn()
    wait_for(lambda: progress_step(redis_client, job) > 0, 90, "the worker to start the job")
    worker.kill()  # type: ignore[attr-defined]  # SIGKILL: no chance to clean up
    killed_at = time.monotonic()
    events = redis_client.pubsub(ignore_subscribe_messages=True)
    events.subscribe(events_channel(job.id))  # as a long-polling reader; the dead worker announces nothing

    def failed() -> bool:
        sweep_lost_jobs(redis_client, queue_name(settings, "tiny"))  # what the gateway does every few seconds
        return fetch(redis_client, job.id).get_status() == "failed"

    wait_for(failed, HEARTBEAT * 3, "the job to be failed")
    assert time.monotonic() - killed_at < 60
    info = job_info(fetch(redis_client, job.id))
    assert info.error is not None and info.error.code == "worker_lost"
    deadline = time.monotonic() + 2  # (the first read may return the subscription's confirmation, as None)
    while (message := events.get_message(timeout=0.2)) is None and time.monotonic() < deadline:
        pass
    assert message is not None, "the sweep did not announce the lost job"
    events.close()


def test_a_killed_workers_job_is_retried_by_another_worker(
    redis_client: redis.Redis, settings: Settings, spawn: Callable[..., object]
) -> None:
    retrying = settings.model_copy(update={"editgan_job_retries": 1})
    job = submit_long_inversion(redis_client, retrying, steps=100)
    worker = spawn()
    wait_for(lambda: progress_step(redis_client, job) > 0, 90, "the worker to start the job")
    worker.kill()  # type: ignore[attr-defined]

    def requeued() -> bool:
        sweep_lost_jobs(redis_client, queue_name(settings, "tiny"))
        return fetch(redis_client, job.id).get_status() == "queued"

    wait_for(requeued, HEARTBEAT * 3, "the job to be requeued")
    waiting = job_info(fetch(redis_client, job.id))
    assert waiting.progress.stage == "queued" and waiting.progress.step == 0  # not the lost run's last step
    spawn()
    wait_for(lambda: fetch(redis_client, job.id).get_status() == "finished", 120, "the retry to finish")
    result = job_info(fetch(redis_client, job.id)).result
    assert result is not None


def test_engine_errors_fail_the_job_with_a_code_and_are_not_retried(
    redis_client: redis.Redis, settings: Settings, spawn: Callable[..., object]
) -> None:
    retrying = settings.model_copy(update={"editgan_job_retries": 2})
    payload = {"model": "tiny", "latent_id": "lat_" + "A" * 22, "vectors": [{"vector": "grow"}], "refine_steps": 2}
    job = enqueue(job_queue(redis_client, retrying, "tiny"), retrying, JobKind.refine, "tiny", payload)
    spawn()
    wait_for(lambda: fetch(redis_client, job.id).get_status() == "failed", 90, "the job to fail")
    info = job_info(fetch(redis_client, job.id))
    assert info.error is not None and info.error.code == "latent_not_found"
    assert fetch(redis_client, job.id).retries_left == 0
    runs = read_job_stats(redis_client).kinds["refine"].statuses
    assert runs["failed"] == 1 and runs["requeued"] == 0, runs  # it ran once: a missing latent stays missing


def test_the_worker_runs_its_loops_in_editgan_precision(
    redis_client: redis.Redis, settings: Settings, spawn: Callable[..., object], tmp_path: Path
) -> None:
    asked = ({"EDITGAN_PRECISION": "bfloat16"}, "bfloat16"), ({}, "float32")  # {}: the bundle's default
    if "bfloat16" not in native_precisions(torch.device("cpu")):  # this CPU would emulate it: refused
        refused = spawn(EDITGAN_PRECISION="bfloat16")
        assert refused.wait(60) != 0  # type: ignore[attr-defined]
        assert "precision bfloat16 needs a CPU with AVX-512" in (tmp_path / "worker.log").read_text()
        asked = asked[1:]
    for env, expected in asked:
        worker = spawn(**env)
        job = submit_long_inversion(redis_client, settings, steps=3)
        wait_for(lambda job=job: job.get_status(refresh=True) == "finished", 90, f"a job in {expected}")
        metrics = job.return_value()["metrics"]
        assert metrics["precision"] == expected and metrics["peak_device_memory_gib"] is None  # a CPU worker
        stop(worker)  # type: ignore[arg-type]


def test_a_cpu_worker_with_cuda_graphs_says_so_and_runs_its_loops_eagerly(
    redis_client: redis.Redis, settings: Settings, spawn: Callable[..., object], tmp_path: Path
) -> None:
    worker = spawn(EDITGAN_CUDA_GRAPHS="true")
    job = submit_long_inversion(redis_client, settings, steps=3)
    wait_for(lambda: job.get_status(refresh=True) == "finished", 90, "a job with EDITGAN_CUDA_GRAPHS on a CPU")
    assert (
        "EDITGAN_CUDA_GRAPHS applies to models on a CUDA device; tiny on cpu: eager"
        in (tmp_path / "worker.log").read_text()
    )
    stop(worker)  # type: ignore[arg-type]
