"""`GET /jobs/{id}?wait=`: a long poll that answers when the job next changes, against the live gateway
and worker. The worker announces progress writes and a job's end; the gateway announces a cancellation."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.live import Live
from tests.processes import free_port, service_env, start, stop, wait_ready
from tests.service.test_api_edits import photo
from tests.service.test_readiness import READY_REDIS_URL


def _get(live: Live, location: str, wait: float) -> tuple[dict[str, Any], float]:
    start = time.monotonic()
    response = live.http.get(location, params={"wait": wait}, timeout=wait + 10)
    assert response.status_code == 200, response.text
    return response.json(), time.monotonic() - start


def _submit(live: Live, seed: int, steps: int) -> str:
    response = live.http.post("/invert", files={"image": ("p.png", photo(seed), "image/png")}, data={"steps": steps})
    assert response.status_code == 202, response.text
    return str(response.headers["location"])


def test_a_long_poll_answers_at_each_change_and_at_the_end(live: Live) -> None:
    long, queued = _submit(live, 11, 3000), _submit(live, 12, 3)  # the one worker is busy: `queued` waits
    steps = []
    for _ in range(4):  # the running job writes progress a few times a second: each wait ends at one
        info, seconds = _get(live, long, 20)
        assert seconds < 5, f"a long poll of a running job took {seconds:.1f} s"
        if info["status"] == "started" and info["progress"]["step"]:
            steps.append(info["progress"]["step"])
    assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] > steps[0], steps

    # Nothing happens to a queued job: the wait runs its course.
    info, seconds = _get(live, queued, 0.6)
    assert info["status"] == "queued" and 0.5 <= seconds < 5, (info["status"], seconds)

    # A cancellation ends a waiting reader's wait at once.
    answers: list[tuple[dict[str, Any], float]] = []
    waiter = threading.Thread(target=lambda: answers.append(_get(live, queued, 25)))
    waiter.start()
    time.sleep(0.5)  # the reader is subscribed by now
    assert live.http.delete(queued).status_code == 200
    waiter.join(30)
    ((cancelled, seconds),) = answers
    assert cancelled["status"] == "canceled" and seconds < 10, seconds

    # So does the end of a running job, stopped here; and an ended job answers at once.
    assert live.http.delete(long).status_code == 200
    deadline = time.monotonic() + 20
    while (info := _get(live, long, 20)[0])["status"] == "started" and time.monotonic() < deadline:
        pass
    assert info["status"] == "stopped"
    info, seconds = _get(live, long, 20)
    assert info["status"] == "stopped" and seconds < 2


def test_a_short_job_is_followed_to_its_result_without_a_polling_interval(live: Live) -> None:
    location = _submit(live, 13, 3)
    start = time.monotonic()
    answers = 0
    while (info := _get(live, location, 20)[0])["status"] not in ("finished", "failed"):
        answers += 1
        assert answers < 50
    assert info["status"] == "finished" and info["result"]["latent_id"].startswith("lat_")
    assert time.monotonic() - start < 15


def test_bad_waits_are_refused_and_an_unknown_job_answers_at_once(live: Live) -> None:
    for bad in ("-1", "31", "soon"):
        refused = live.http.get("/jobs/nope", params={"wait": bad})
        assert refused.status_code == 422 and refused.json()["code"] == "validation_error", refused.text
    start = time.monotonic()
    missing = live.http.get("/jobs/no-such-job", params={"wait": 20})
    assert missing.status_code == 404 and missing.json()["code"] == "job_not_found"
    assert time.monotonic() - start < 2


def test_open_long_polls_share_the_gateways_one_subscription(live: Live) -> None:
    long, queued = _submit(live, 14, 3000), _submit(live, 15, 3)  # `queued` waits behind `long`
    db = live.redis.connection_pool.connection_kwargs.get("db", 0)

    def listeners() -> int:
        clients = live.redis.client_list()
        return sum(1 for c in clients if c.get("name") == "editgan-job-events" and int(c.get("db", -1)) == db)

    answers: list[tuple[dict[str, Any], float]] = []
    waiters = [threading.Thread(target=lambda: answers.append(_get(live, queued, 4))) for _ in range(12)]
    for w in waiters:
        w.start()
    time.sleep(1.0)  # all twelve are waiting now
    assert listeners() == 1
    waiting = [line for line in live.http.get("/metrics").text.splitlines() if line.startswith("editgan_job_waiters")]
    assert waiting == ["editgan_job_waiters 12.0"], waiting
    for w in waiters:
        w.join(20)
    assert len(answers) == 12 and all(a["status"] == "queued" and s >= 3.5 for a, s in answers), answers
    for location in (queued, long):
        assert live.http.delete(location).status_code == 200


def test_announcement_channels_name_their_job() -> None:
    """Logic only: the subscriber's parsing of the channels it receives."""
    from service.job_events import job_id_of
    from workers.queue import events_channel

    assert job_id_of(events_channel("a1-b2").encode()) == "a1-b2" == job_id_of(events_channel("a1-b2"))
    for other in ("editgan:job:a1:stop", "editgan:job::events", "other:job:a1:events"):
        assert job_id_of(other) is None


def test_a_shutting_down_gateway_answers_its_long_polls_at_once(tiny_models: Path, tmp_path: Path) -> None:
    # uvicorn waits for open requests before it exits: a long poll must not hold a rolling deploy for 30 s.
    client = redis.Redis.from_url(READY_REDIS_URL)
    client.flushdb()
    port, log = free_port(), tmp_path / "gateway.log"
    gateway = start(["serve"], service_env(READY_REDIS_URL, tiny_models, port), log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, [gateway], log, path="/healthz")
        submitted = httpx.post(f"{base_url}/invert", files={"image": ("p.png", photo(16), "image/png")})
        location = f"{base_url}{submitted.headers['location']}"  # no worker: it stays queued
        answers: list[tuple[int, float]] = []

        def wait() -> None:
            start_at = time.monotonic()
            response = httpx.get(location, params={"wait": 25}, timeout=40)
            answers.append((response.status_code, time.monotonic() - start_at))

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(1.0)
        gateway.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        assert gateway.wait(20) == 0, log.read_text()[-2000:]
        assert time.monotonic() - stopped_at < 10
        waiter.join(30)
        ((status, seconds),) = answers
        assert status == 200 and seconds < 10, (status, seconds)
    finally:
        stop(gateway)
        client.flushdb()
        client.close()
