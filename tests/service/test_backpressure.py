"""The queue bounds under concurrency, against a real Redis and real rq jobs: submissions that race (a slow
enqueue widens the window between the check and the count) still never pass a bound, because every
gateway admits jobs under one Redis lock. Own db (14): it empties its queue."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from rq import Queue
from rq.job import Job

from service.backpressure import admit
from service.errors import ApiError

REDIS_URL = os.environ.get("EDITGAN_TEST_BACKPRESSURE_REDIS_URL", "redis://127.0.0.1:6379/14")


@pytest.fixture
def queue() -> Iterator[Queue]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    try:
        yield Queue("bounds", connection=client)
    finally:
        client.flushdb()
        client.close()


def race(queue: Queue, owners: list[str | None], *, max_total: int, max_per_key: int) -> list[str | None]:
    """Every owner submits at once, each through its own connection (as separate gateways would);
    returns the owners whose job was admitted."""
    go = threading.Barrier(len(owners))
    admitted: list[str | None] = []

    def submit(owner: str | None) -> None:
        client = redis.Redis.from_url(REDIS_URL)
        q = Queue(queue.name, connection=client)

        def slow_enqueue() -> Job:
            time.sleep(0.05)  # a slow Redis or a busy gateway: without the lock, every racer passes the check
            return q.enqueue("builtins.len", "x")

        go.wait(10)
        try:
            admit(client, q, owner, slow_enqueue, max_total=max_total, max_per_key=max_per_key, ttl=60)
            admitted.append(owner)
        except ApiError as exc:
            assert exc.status == 429
        finally:
            client.close()

    threads = [threading.Thread(target=submit, args=(o,)) for o in owners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return admitted


def test_racing_submissions_never_pass_the_total_bound(queue: Queue) -> None:
    admitted = race(queue, [None] * 10, max_total=3, max_per_key=100)
    assert len(admitted) == 3 and queue.count == 3


def test_racing_submissions_of_one_key_never_pass_its_bound(queue: Queue) -> None:
    admitted = race(queue, ["alice"] * 6 + ["bob"] * 6, max_total=100, max_per_key=2)
    assert sorted(a or "" for a in admitted) == ["alice", "alice", "bob", "bob"] and queue.count == 4
