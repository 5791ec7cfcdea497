"""Issue 9 against a real gateway with API keys on, on its own Redis db: 401/403, owner isolation, queue
bounds, rate limit, Idempotency-Key, CORS. No worker runs, so submitted jobs stay queued (deterministic
queue bounds); each test starts from an empty queue."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from PIL import Image
from rq import Queue

from service.auth import owner_of
from tests.processes import free_port, service_env, start, stop, wait_ready

SECURE_REDIS_URL = os.environ.get("EDITGAN_TEST_SECURE_REDIS_URL", "redis://127.0.0.1:6379/11")
KEYS = {name: f"{name}-secret-{'x' * 20}" for name in ("alice", "bob", "carol", "dave", "erin")}
ORIGIN = "https://editor.example"
RATE = 60  # requests per minute per key: carol spends hers, the others stay well below


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def secure(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, redis.Redis]]:
    client = redis.Redis.from_url(SECURE_REDIS_URL)
    client.flushdb()
    port = free_port()
    env = service_env(
        SECURE_REDIS_URL,
        tiny_models,
        port,
        EDITGAN_API_KEYS=",".join(f"{name}:{secret}" for name, secret in KEYS.items()),
        EDITGAN_CORS_ORIGINS=ORIGIN,
        EDITGAN_RATE_LIMIT=str(RATE),
        EDITGAN_MAX_QUEUED_PER_KEY="2",
        EDITGAN_MAX_QUEUED_JOBS="3",
    )
    log = tmp_path_factory.mktemp("secure") / "gateway.log"
    gateway = start(["serve"], env, log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, [gateway], log, path="/healthz")  # no worker to wait for
        with httpx.Client(base_url=base_url, timeout=30) as http:
            yield http, client
    finally:
        stop(gateway)
        client.flushdb()
        client.close()


@pytest.fixture
def api(secure: tuple[httpx.Client, redis.Redis]) -> httpx.Client:
    http, client = secure
    Queue("editgan:tiny", connection=client).empty()  # each test starts with nothing queued (the model's queue)
    return http


def error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    body: dict[str, str] = response.json()
    assert body["code"] == code and body["message"], body
    return body


def invert(api: httpx.Client, who: str, seed: int = 0, **headers: str) -> httpx.Response:
    return api.post("/invert", files={"image": ("i.png", png(seed), "image/png")}, headers=auth(who) | headers)


# ---------------------------------------------------------------- 401 and 403


def test_writes_and_private_reads_without_a_key_get_401_with_a_challenge(api: httpx.Client) -> None:
    for response in (
        api.post("/latents/sample", json={"model": "tiny", "seed": 1}),
        api.post("/invert", files={"image": ("i.png", png(0), "image/png")}),
        api.delete("/vectors/tiny/anything"),
        api.get("/jobs/some-job"),
        api.get(f"/latents/lat_{'A' * 22}"),
        api.get(f"/results/img_{'A' * 22}.png"),
    ):
        error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    error(api.get("/models", headers={"Authorization": "Basic Zm9vOmJhcg=="}), 401, "unauthorized")


def test_a_wrong_key_gets_403_and_both_headers_are_accepted(api: httpx.Client) -> None:
    error(api.post("/latents/sample", json={"model": "tiny"}, headers={"X-API-Key": "n" * 32}), 403, "forbidden")
    error(api.get("/models", headers={"Authorization": "Bearer " + "n" * 32}), 403, "forbidden")
    assert api.post("/latents/sample", json={"model": "tiny"}, headers={"X-API-Key": KEYS["alice"]}).status_code == 201
    assert api.post("/latents/sample", json={"model": "tiny"}, headers=auth("alice")).status_code == 201


def test_public_reads_and_the_editor_need_no_key(api: httpx.Client) -> None:
    for path in ("/", "/healthz", "/models", "/models/tiny", "/vectors", "/openapi.json", "/static/api.js"):
        assert api.get(path).status_code == 200, path


# ---------------------------------------------------------------- owner isolation


def test_latents_results_and_jobs_are_readable_only_by_the_key_that_created_them(
    api: httpx.Client, secure: tuple[httpx.Client, redis.Redis]
) -> None:
    sample = api.post("/latents/sample", json={"model": "tiny", "seed": 3}, headers=auth("alice")).json()
    latent, image = f"/latents/{sample['latent_id']}", sample["images"]["image"]
    job = invert(api, "alice").json()["location"]
    for path in (latent, image, job):
        assert api.get(path, headers=auth("alice")).status_code == 200, path
        error(api.get(path, headers=auth("bob")), 403, "forbidden")
    error(api.delete(job, headers=auth("bob")), 403, "forbidden")
    body = {"latent_id": sample["latent_id"], "vectors": [{"vector": "any", "scale": 1.0}]}
    error(api.post("/edit/vector", json=body, headers=auth("bob")), 403, "forbidden")
    mask = {"mask": ("m.png", png(1), "image/png")}
    error(
        api.post("/edit/optimize", data={"latent_id": sample["latent_id"]}, files=mask, headers=auth("bob")),
        403,
        "forbidden",
    )

    # Redis holds a hash of the key's name as the owner, never the secret.
    _, client = secure
    assert client.hget(f"editgan:latent:{sample['latent_id']}", "owner") == owner_of("alice").encode()
    for key in client.scan_iter():
        assert KEYS["alice"].encode() not in key
        if client.type(key) == b"string":
            assert KEYS["alice"].encode() not in (client.get(key) or b"")


# ---------------------------------------------------------------- limits


def test_job_requests_past_the_per_key_and_total_queue_bounds_get_429_with_retry_after(api: httpx.Client) -> None:
    assert [invert(api, "dave", seed=i).status_code for i in range(2)] == [202, 202]
    refused = invert(api, "dave", seed=2)
    assert "EDITGAN_MAX_QUEUED_PER_KEY" in error(refused, 429, "queue_full")["message"]
    assert int(refused.headers["Retry-After"]) > 0
    assert invert(api, "erin").status_code == 202  # 3 queued: the total bound
    refused = invert(api, "erin", seed=1)
    assert "EDITGAN_MAX_QUEUED_JOBS" in error(refused, 429, "queue_full")["message"]
    assert int(refused.headers["Retry-After"]) > 0


def test_the_queue_bounds_hold_exactly_under_concurrent_submissions(api: httpx.Client) -> None:
    """12 submissions at once from 4 keys against a total bound of 3 and a per-key bound of 2: exactly 3
    accepted, no key over 2 (check, enqueue and count share one lock across gateways)."""
    who = ["alice", "bob", "dave", "erin"] * 3
    images = [png(100 + i) for i in range(len(who))]
    go = threading.Barrier(len(who))
    statuses: dict[int, int] = {}

    def submit(i: int) -> None:
        with httpx.Client(base_url=str(api.base_url), timeout=30) as http:
            go.wait(30)
            r = http.post("/invert", files={"image": ("i.png", images[i], "image/png")}, headers=auth(who[i]))
            statuses[i] = r.status_code

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(who))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    accepted = [who[i] for i, s in statuses.items() if s == 202]
    assert sorted(statuses.values()).count(429) == len(who) - 3 and len(accepted) == 3, statuses
    assert max(accepted.count(k) for k in set(accepted)) <= 2
    assert Queue("editgan:tiny", connection=redis.Redis.from_url(SECURE_REDIS_URL)).count == 3


def test_requests_past_the_rate_limit_get_429_with_retry_after(api: httpx.Client) -> None:
    statuses = []
    for _ in range(RATE + 20):
        response = api.get("/models", headers=auth("carol"))
        statuses.append(response.status_code)
        if response.status_code == 429:
            break
    assert statuses[-1] == 429 and len(statuses) > RATE - 1, statuses
    error(response, 429, "rate_limited")
    assert int(response.headers["Retry-After"]) >= 1
    assert api.get("/healthz", headers=auth("carol")).status_code == 200  # probes are never limited
    assert api.get("/models", headers=auth("bob")).status_code == 200  # one bucket per key


def test_an_idempotency_key_returns_the_same_job_and_refuses_another_request(api: httpx.Client) -> None:
    first = invert(api, "alice", seed=5, **{"Idempotency-Key": "retry-1"})
    again = invert(api, "alice", seed=5, **{"Idempotency-Key": "retry-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.headers["Idempotent-Replayed"] == "true" and again.headers["Location"] == first.headers["Location"]
    error(invert(api, "alice", seed=6, **{"Idempotency-Key": "retry-1"}), 422, "idempotency_key_reused")
    other = invert(api, "bob", seed=5, **{"Idempotency-Key": "retry-1"})  # keys are per caller
    assert other.status_code == 202 and other.json()["job_id"] != first.json()["job_id"]


# ---------------------------------------------------------------- CORS


def test_cors_answers_only_the_configured_origin(api: httpx.Client) -> None:
    allowed = api.get("/models", headers={"Origin": ORIGIN})
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "access-control-allow-origin" not in api.get("/models", headers={"Origin": "https://evil.example"}).headers
    preflight = api.options(
        "/invert",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, idempotency-key",
        },
    )
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    # Downloads: a cross-origin HEAD with a key passes the preflight, and the file name can be read.
    head = api.options("/results/img_x.png", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "HEAD"})
    assert head.status_code == 200 and "HEAD" in head.headers["Access-Control-Allow-Methods"]
    assert "content-disposition" in allowed.headers["Access-Control-Expose-Headers"].lower()
