"""A live service shared by the HTTP tests (tests/service, tests/client): `editgan serve` + `editgan worker`.

One instance per test session, registered in tests/conftest.py: two would share Redis db 10 and flush it
under each other. Tests that share it use names of their own (vectors) and never wait on another's jobs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.processes import free_port, service_env, start, stop, wait_ready

# Its own db: the session-long worker must not see the per-test flushes of db 9.
LIVE_REDIS_URL = os.environ.get("EDITGAN_TEST_LIVE_REDIS_URL", "redis://127.0.0.1:6379/10")
MAX_UPLOAD = 300_000  # bytes: small, so that the 413 path is cheap to reach


@dataclass
class Live:
    base_url: str
    http: httpx.Client
    redis: redis.Redis
    models_dir: Path
    log: Path

    def wait_job(self, location: str, timeout: float = 60) -> dict[str, Any]:
        """Poll a job until it is terminal; returns its JobInfo."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info: dict[str, Any] = self.http.get(location).json()
            if info["status"] in ("finished", "failed", "stopped", "canceled"):
                return info
            time.sleep(0.1)
        raise AssertionError(f"job {location} not terminal after {timeout} s: {info}")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import save_tiny_model  # not at the top: tests/conftest.py imports this module

    return save_tiny_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def live(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    client = redis.Redis.from_url(LIVE_REDIS_URL)
    client.flushdb()
    port = free_port()
    env = service_env(
        LIVE_REDIS_URL,
        tiny_models,
        port,
        EDITGAN_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
        EDITGAN_MAX_STEPS="3000",
        EDITGAN_PREVIEW_MEMBERS="2",  # of the tiny model's 3
    )
    log = tmp_path_factory.mktemp("live") / "service.log"
    procs = [start(["serve"], env, log), start(["worker"], env, log)]
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, procs, log)
        with httpx.Client(base_url=base_url, timeout=30) as http:
            yield Live(base_url, http, client, tiny_models, log)
    finally:
        for p in procs:
            stop(p)
        client.flushdb()
        client.close()
