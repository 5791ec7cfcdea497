"""Queue bookkeeping against a real Redis."""

from __future__ import annotations

import redis
from rq import Queue, Worker

from workers.queue import live_workers


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
