"""`Server-Timing` on real-time edits: the header's grammar, the live gateway's phases, and the setting."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
from fastapi.testclient import TestClient

from engine import Bundle
from schemas.settings import Settings
from service.app import create_app
from service.server_timing import HEADER, TOTAL, Phases, parse
from tests.service.conftest import Live

PHASES = ["latent", "vectors", "engine", "store"]


def test_parse_reads_durations_and_skips_metrics_without_one() -> None:
    value = 'cache;desc="hit, warm", db;dur=53.5, app;dur=47.2;desc="a;b", miss, bad;dur=x, total;desc=t;dur=1e2'
    assert parse(value) == {"db": 53.5, "app": 47.2, "total": 100.0}
    assert parse("") == {}


def test_phases_are_consecutive_and_the_route_holds_them_all() -> None:
    phases = Phases()
    time.sleep(0.002)
    phases.mark("first")
    time.sleep(0.001)
    phases.mark("second")
    time.sleep(0.002)
    timings = parse(phases.header())
    assert list(timings) == ["first", "second", TOTAL]
    assert timings["first"] >= 2.0 and timings["second"] >= 1.0
    assert timings[TOTAL] >= timings["first"] + timings["second"] + 2.0


def test_a_real_time_edit_says_where_its_time_went(live: Live) -> None:
    latent_id = _upload_latent(live.http, np.zeros((8, 32), np.float32))
    response = live.http.post("/edit/vector", json={"latent_id": latent_id, "vectors": [{"vector": "grow"}]})
    assert response.status_code == 200, response.text
    timings = parse(response.headers[HEADER])
    assert list(timings) == [*PHASES, TOTAL]
    assert all(t >= 0 for t in timings.values())
    # each phase is rounded to a microsecond
    assert sum(timings[p] for p in PHASES) <= timings[TOTAL] + 0.005
    # the route's engine time (`metrics.seconds`) runs from the vectors' sum to the arrays: it holds `engine`
    assert timings["engine"] <= response.json()["metrics"]["seconds"] * 1000 + 0.005
    assert timings["engine"] > 0

    # a refinement answers 202 with a job: no phases to report
    job = live.http.post(
        "/edit/vector", json={"latent_id": latent_id, "vectors": [{"vector": "grow"}], "refine_steps": 1}
    )
    assert job.status_code == 202 and HEADER.lower() not in job.headers


def test_server_timing_off_sends_no_header(tiny_bundle: Bundle, redis_url: str) -> None:
    app = create_app(Settings(redis_url=redis_url, editgan_server_timing=False), bundles={"tiny": tiny_bundle})
    with TestClient(app) as client:
        latent_id = _upload_latent(client, tiny_bundle.generator.sample_w_plus(1, seed=0)[0].numpy())
        response = client.post("/edit/vector", json={"latent_id": latent_id, "vectors": [{"vector": "grow"}]})
        assert response.status_code == 200, response.text
        assert HEADER.lower() not in response.headers


def _upload_latent(http: httpx.Client, w: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, w)
    response = http.post("/latents", files={"file": ("w.npy", buffer.getvalue(), "application/octet-stream")})
    assert response.status_code == 201, response.text
    latent_id: str = response.json()["latent_id"]
    return latent_id
