"""`/readyz` of a gateway with no worker (degraded, still 200) and of one whose Redis is gone (a 503 in the
shape of every error, with Retry-After)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.processes import free_port, gateway_alone, service_env, start, stop, wait_ready

READY_REDIS_URL = os.environ.get("EDITGAN_TEST_READY_REDIS_URL", "redis://127.0.0.1:6379/9")


def test_without_a_worker_the_gateway_stays_in_rotation_and_says_why(tiny_models: Path, tmp_path: Path) -> None:
    # Not a 503: a worker fleet scaled to zero must not take the gateways out of rotation (no job could then
    # arrive to scale it up), and real-time edits need no worker.
    with gateway_alone(READY_REDIS_URL, tiny_models, tmp_path / "gateway.log") as base_url:
        response = httpx.get(f"{base_url}/readyz", timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "degraded" and body["checks"]["workers"] == 0 and body["checks"]["redis"] is True
    assert body["message"] == "no live worker for model tiny: its jobs wait in the queue" and "code" not in body
    assert body["unserved_models"] == ["tiny"]


def test_not_ready_says_why_as_an_error_body_with_retry_after(tiny_models: Path, tmp_path: Path) -> None:
    port, nowhere = free_port(), free_port()  # nothing listens on `nowhere`: Redis is unreachable
    log = tmp_path / "gateway.log"
    gateway = start(["serve"], service_env(f"redis://127.0.0.1:{nowhere}/0", tiny_models, port), log)
    try:
        wait_ready(f"http://127.0.0.1:{port}", [gateway], log, path="/healthz")
        response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
    finally:
        stop(gateway)
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    body = response.json()
    assert body["status"] == "not_ready" and body["checks"]["redis"] is False and body["checks"]["models"] is True
    assert body["code"] == "unavailable" and body["message"] == "Redis unreachable"
