"""Issue 9 end to end with a real worker: with API keys on, a job's outputs (latent, result images, edit vector)
are stored by the worker under the submitting key's owner, readable by that key and 403 for another; and jobs
keep running and stay readable across a gateway restart. Own Redis db (test_security.py's has no worker)."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from service.auth import owner_of
from tests.processes import free_port, service_env, start, stop, wait_ready
from tests.service.test_security import KEYS, auth, error, png
from workers.queue import fetch

WORKER_REDIS_URL = os.environ.get("EDITGAN_TEST_SECURE_WORKER_REDIS_URL", "redis://127.0.0.1:6379/12")


@dataclass
class Stack:
    base_url: str
    env: dict[str, str]
    log: Path
    gateway: Popen[bytes]
    worker: Popen[bytes]
    redis: redis.Redis

    def stop_gateway(self) -> None:
        assert stop(self.gateway) == 0

    def start_gateway(self) -> None:
        self.gateway = start(["serve"], self.env, self.log)
        wait_ready(self.base_url, [self.gateway, self.worker], self.log)

    def wait_job(self, http: httpx.Client, location: str, who: str, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info: dict[str, Any] = http.get(location, headers=auth(who)).json()
            if info["status"] in ("finished", "failed", "stopped", "canceled"):
                return info
            time.sleep(0.2)
        raise AssertionError(f"job {location} not terminal after {timeout} s")


@pytest.fixture(scope="module")
def stack(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    client = redis.Redis.from_url(WORKER_REDIS_URL)
    client.flushdb()
    port = free_port()
    env = service_env(
        WORKER_REDIS_URL,
        tiny_models,
        port,
        EDITGAN_MAX_STEPS="5000",
        EDITGAN_API_KEYS=",".join(f"{name}:{secret}" for name, secret in KEYS.items()),
    )
    log = tmp_path_factory.mktemp("secure-worker") / "service.log"
    gateway, worker = start(["serve"], env, log), start(["worker"], env, log)
    base_url = f"http://127.0.0.1:{port}"
    s = Stack(base_url, env, log, gateway, worker, client)
    try:
        wait_ready(base_url, [gateway, worker], log)
        yield s
    finally:
        stop(s.gateway)
        stop(s.worker)
        client.flushdb()
        client.close()


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        yield client


def readable_only_by_alice(http: httpx.Client, paths: list[str]) -> None:
    for path in paths:
        assert http.get(path, headers=auth("alice")).status_code == 200, path
        error(http.get(path, headers=auth("bob")), 403, "forbidden")
        error(http.get(path), 401, "unauthorized")


def test_a_workers_outputs_belong_to_the_key_that_submitted_the_job(http: httpx.Client, stack: Stack) -> None:
    submitted = http.post("/invert", files={"image": ("i.png", png(0), "image/png")}, headers=auth("alice"))
    assert submitted.status_code == 202, submitted.text
    job = stack.wait_job(http, submitted.json()["location"], "alice")
    assert job["status"] == "finished", job
    result = job["result"]
    images = [url for url in result["images"].values() if url]
    assert len(images) >= 3
    readable_only_by_alice(http, [submitted.json()["location"], f"/latents/{result['latent_id']}", *images])
    # The worker, not the gateway, wrote these: they carry alice's owner (a hash of her key's name).
    assert stack.redis.hget(f"editgan:latent:{result['latent_id']}", "owner") == owner_of("alice").encode()

    # A refinement job on alice's latent: its outputs are alice's too, and bob may not even start one.
    # Random weights: the vector gets every class, so that its region is never empty.
    delta = np.random.default_rng(0).normal(size=(1, 8, 32)).astype(np.float32) * 0.1
    buf = io.BytesIO()
    np.save(buf, delta)
    saved = http.post(
        "/vectors",
        data={"name": "every", "classes": "0,1,2,3,4"},
        files={"file": buf.getvalue()},
        headers=auth("alice"),
    )
    assert saved.status_code == 201, saved.text
    body = {"latent_id": result["latent_id"], "vectors": [{"vector": "every", "scale": 0.5}], "refine_steps": 2}
    error(http.post("/edit/vector", json=body, headers=auth("bob")), 403, "forbidden")
    refined = http.post("/edit/vector", json=body, headers=auth("alice"))
    assert refined.status_code == 202, refined.text
    job = stack.wait_job(http, refined.json()["location"], "alice")
    assert job["status"] == "finished", job.get("error")
    outputs = [f"/latents/{job['result']['latent_id']}", *[u for u in job["result"]["images"].values() if u]]
    readable_only_by_alice(http, outputs)


def test_a_job_running_while_the_gateway_restarts_finishes_and_stays_readable(http: httpx.Client, stack: Stack) -> None:
    submitted = http.post(
        "/invert", files={"image": ("i.png", png(1), "image/png")}, data={"steps": "2500"}, headers=auth("alice")
    )
    assert submitted.status_code == 202, submitted.text
    job_id, location = submitted.json()["job_id"], submitted.json()["location"]
    owner = owner_of("alice")

    def step() -> int:
        job = fetch(stack.redis, job_id, owner)
        assert job.get_status() in ("queued", "started"), "the job ended before the gateway went down"
        return int(job.meta.get("progress", {}).get("step", 0))

    deadline = time.monotonic() + 120
    while step() == 0:
        assert time.monotonic() < deadline, "the worker never started the job"
        time.sleep(0.1)

    stack.stop_gateway()
    at_stop = step()
    while step() == at_stop:  # no gateway: the worker goes on regardless
        time.sleep(0.1)
    stack.start_gateway()  # a new process on the same port and Redis

    job = stack.wait_job(http, location, "alice")
    assert job["status"] == "finished", job
    assert job["progress"]["total"] == 2500
    result = job["result"]
    readable_only_by_alice(http, [location, f"/latents/{result['latent_id']}", result["images"]["image"]])
