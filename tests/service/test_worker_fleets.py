"""One gateway, two models, a fleet of workers for each (EDITGAN_WORKER_MODELS): each model's jobs go to
its own queue (`EDITGAN_QUEUE:<model>`), so a worker takes only jobs for a model it has loaded, and the
gateway is ready only while every model has a live worker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from engine.errors import BundleError
from tests.conftest import save_tiny_model
from tests.processes import free_port, service_env, start, stop, wait_ready
from tests.service.test_api_edits import photo
from tests.service.test_readiness import READY_REDIS_URL
from workers.models import load_models


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleets")
    save_tiny_model(root, name="tiny")
    save_tiny_model(root, name="tiny-b")
    return root


def _poll(http: httpx.Client, path: str, done: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = http.get(path).json()
        if done(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"{path} after {timeout} s: {body}")


def _invert(http: httpx.Client, model: str) -> str:
    response = http.post("/invert", files={"image": ("p.png", photo(1), "image/png")}, data={"model": model})
    assert response.status_code == 202, response.text
    return str(response.headers["location"])


def test_each_model_has_its_own_queue_and_workers(two_models: Path, tmp_path: Path) -> None:
    client = redis.Redis.from_url(READY_REDIS_URL)
    client.flushdb()
    port = free_port()
    env = service_env(READY_REDIS_URL, two_models, port)
    log = tmp_path / "service.log"
    procs = [start(["serve"], env, log), start(["worker"], env | {"EDITGAN_WORKER_MODELS": "tiny"}, log)]
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url, procs, log, path="/healthz")
        with httpx.Client(base_url=base_url, timeout=30) as http:
            # degraded (still 200: in rotation) while a model has no worker, and the message names it
            unserved = "no live worker for model tiny-b: its jobs wait in the queue"
            body = _poll(http, "/readyz", lambda b: b.get("message") == unserved)
            assert body["status"] == "degraded" and body["checks"]["workers"] == 0
            assert body["unserved_models"] == ["tiny-b"]
            assert http.get("/readyz").status_code == 200
            first, second = _invert(http, "tiny-b"), _invert(http, "tiny")  # tiny-b's job first in time
            done = _poll(http, second, lambda b: b["status"] == "finished")
            assert done["model"] == "tiny"
            time.sleep(1.0)  # the worker is idle now: had it listened on tiny-b's queue, it would have taken that job
            waiting = http.get(first).json()
            assert waiting["status"] == "queued" and waiting["queue_position"] == 0, waiting
            depth = [line for line in http.get("/metrics").text.splitlines() if line.startswith("editgan_queue_depth")]
            assert 'editgan_queue_depth{queue="editgan:tiny-b"} 1.0' in depth, depth
            assert 'editgan_queue_depth{queue="editgan:tiny"} 0.0' in depth, depth

            procs.append(start(["worker"], env | {"EDITGAN_WORKER_MODELS": "tiny-b"}, log))
            assert _poll(http, first, lambda b: b["status"] == "finished")["model"] == "tiny-b"
            ready = _poll(http, "/readyz", lambda b: b["status"] == "ready")
            assert ready["checks"]["workers"] == 1 and "message" not in ready and "unserved_models" not in ready
    finally:
        for p in procs:
            stop(p)
        client.flushdb()
        client.close()


def test_a_worker_loads_only_the_models_it_is_given(two_models: Path) -> None:
    import torch

    assert sorted(load_models(two_models, torch.device("cpu"))) == ["tiny", "tiny-b"]
    assert sorted(load_models(two_models, torch.device("cpu"), only=["tiny-b"])) == ["tiny-b"]
    with pytest.raises(BundleError, match=r"EDITGAN_WORKER_MODELS names car, not in .* \['tiny', 'tiny-b'\]"):
        load_models(two_models, torch.device("cpu"), only=["tiny", "car"])
