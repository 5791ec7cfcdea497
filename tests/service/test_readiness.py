"""`/readyz` of a gateway with no worker: a 503 in the shape of every error, with Retry-After."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.processes import gateway_alone

READY_REDIS_URL = os.environ.get("EDITGAN_TEST_READY_REDIS_URL", "redis://127.0.0.1:6379/9")


def test_not_ready_says_why_as_an_error_body_with_retry_after(tiny_models: Path, tmp_path: Path) -> None:
    with gateway_alone(READY_REDIS_URL, tiny_models, tmp_path / "gateway.log") as base_url:
        response = httpx.get(f"{base_url}/readyz", timeout=10)
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    body = response.json()
    assert body["status"] == "not_ready" and body["checks"]["workers"] == 0 and body["checks"]["redis"] is True
    assert body["code"] == "unavailable" and body["message"] == "no live worker for model tiny"
