"""Queue bookkeeping against a real Redis."""

from __future__ import annotations

import redis
from rq import Queue, Worker

from schemas.jobs import JobStatus
from workers.queue import cancel, live_workers, stop_key


def test_a_worker_whose_key_expired_is_not_counted_live(redis_client: redis.Redis) -> None:
    queue = Queue("live-workers", connection=redis_client)
    alive, killed = (Worker([queue], connection=redis_client, name=n) for n in ("alive", "killed"))
    for worker in (alive, killed):
        worker.register_birth()
    assert live_workers(queue) == 2
    redis_client.delete(killed.key)  # what expiry leaves after a SIGKILL: the id stays in rq's sets
    assert Worker.count(queue=queue) == 2  # rq's own count still has it
    assert live_workers(queue) == 1
    assert Worker.count(queue=queue) == 1  # and the dead id is gone for every reader


def test_cancelling_a_queued_job_also_flags_it_to_stop(redis_client: redis.Redis) -> None:
    # A worker may take the job between the status read and rq's cancel, and would then run it: the stop key
    # set first makes it stop at its first step.
    queue = Queue("cancel-race", connection=redis_client)
    job = queue.enqueue("workers.jobs.run_invert", {})
    assert cancel(redis_client, job, stop_ttl=60) == JobStatus.canceled
    assert job.get_status() == "canceled" and redis_client.exists(stop_key(job.id))
    assert 0 < redis_client.ttl(stop_key(job.id)) <= 60
