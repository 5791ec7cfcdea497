"""The embedded Redis of `editgan up` and the bench: its server stops with it, and its data stays."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
from redis import Redis

from service.embedded import EmbeddedRedis


def _gone(pid: int, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_close_stops_the_server_while_a_client_is_still_connected(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path / "redis")
    lingering = Redis.from_url(embedded.url)  # e.g. a worker that has not hung up yet
    lingering.set("kept", "written before the stop")
    assert lingering.client_setname("still-connected")
    embedded.close()
    assert _gone(embedded.pid), "the redis-server outlived close()"
    lingering.close()
    # what was written survives in the append-only file: a new server on the directory serves it
    again = EmbeddedRedis(tmp_path / "redis")
    try:
        assert Redis.from_url(again.url).get("kept") == b"written before the stop"
    finally:
        again.close()
    assert _gone(again.pid)


def test_the_server_logs_every_write_and_takes_no_snapshots(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path / "redis")
    try:
        client = Redis.from_url(embedded.url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        # RDB snapshots would fork and rewrite the whole dataset every few seconds under load
        assert client.config_get("save") == {"save": ""}
        client.close()
    finally:
        embedded.close()


def test_a_throwaway_server_keeps_no_log_and_takes_no_snapshots(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path / "redis", persistent=False)  # the benchmarks' own
    try:
        client = Redis.from_url(embedded.url)
        assert client.config_get("appendonly") == {"appendonly": "no"} and client.config_get("save") == {"save": ""}
        client.set("k", "v")
        client.close()
    finally:
        embedded.close()
    assert not list((tmp_path / "redis").glob("*.aof*")) and not (tmp_path / "redis" / "appendonlydir").exists()
