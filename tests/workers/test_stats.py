"""Job statistics through a real Redis: several writers aggregate into one cumulative histogram."""

from __future__ import annotations

import math

import pytest
import redis

from workers.stats import BUCKETS, KINDS, STATUSES, read_job_stats, record_job, stats_key


def test_two_workers_aggregate_into_one_cumulative_histogram(redis_url: str) -> None:
    # Two separate connections stand for two worker processes; a third reads, as the gateway would.
    runs = {
        "a": [("invert", "finished", 0.03), ("invert", "finished", 0.05), ("optimize", "failed", 42.0)],
        "b": [("invert", "stopped", 7.5), ("optimize", "finished", 1799.0), ("optimize", "requeued", 5000.0)],
    }
    for runs_of_worker in runs.values():
        worker = redis.Redis.from_url(redis_url)
        for kind, status, seconds in runs_of_worker:
            record_job(worker, kind=kind, status=status, seconds=seconds)
        worker.close()

    reader = redis.Redis.from_url(redis_url)
    stats = read_job_stats(reader)
    reader.close()
    assert set(stats.kinds) == set(KINDS)
    every_run = [run for runs_of_worker in runs.values() for run in runs_of_worker]
    for kind, ks in stats.kinds.items():
        times = [s for k, _, s in every_run if k == kind]
        assert ks.count == len(times)
        assert ks.sum == pytest.approx(sum(times))
        # Cumulative: each bucket counts every run at or under its bound; the last bound is +Inf.
        assert [bound for bound, _ in ks.buckets] == [*BUCKETS, math.inf]
        assert [count for _, count in ks.buckets] == [sum(t <= bound for t in times) for bound, _ in ks.buckets]
        assert ks.statuses == {st: sum(k == kind and s == st for k, s, _ in every_run) for st in STATUSES}


def test_fresh_redis_reads_zeros_for_every_kind(redis_client: redis.Redis) -> None:
    stats = read_job_stats(redis_client)
    for ks in stats.kinds.values():
        assert ks.count == 0 and ks.sum == 0.0
        assert all(count == 0 for _, count in ks.buckets)
        assert set(ks.statuses) == set(STATUSES) and not any(ks.statuses.values())


def test_decoded_client_and_prefixes_are_independent(redis_url: str) -> None:
    text = redis.Redis.from_url(redis_url, decode_responses=True)
    record_job(text, kind="refine", status="finished", seconds=0.2, prefix="blue")
    assert read_job_stats(text, prefix="blue").kinds["refine"].count == 1
    assert read_job_stats(text, prefix="green").kinds["refine"].count == 0
    text.close()


@pytest.mark.parametrize(
    ("kind", "status", "seconds", "message"),
    [
        ("train", "finished", 1.0, "job kind 'train' is unknown"),
        ("invert", "canceled", 1.0, "job status 'canceled' is unknown"),
        ("invert", "finished", -0.1, "must be finite and >= 0"),
        ("invert", "finished", math.nan, "must be finite and >= 0"),
    ],
)
def test_bad_records_are_refused_and_write_nothing(
    redis_client: redis.Redis, kind: str, status: str, seconds: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        record_job(redis_client, kind=kind, status=status, seconds=seconds)
    assert not redis_client.exists(stats_key())
