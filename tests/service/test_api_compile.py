"""EDITGAN_COMPILE through the real processes: a gateway and a worker that compile their generator at
start-up answer as the session's eager ones do, on the same Redis and the same model."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from tests.live import LIVE_REDIS_URL, Live
from tests.processes import free_port, service_env, start, stop, wait_ready


def _images(body: dict[str, Any]) -> dict[str, np.ndarray]:
    """The inline PNGs (data: URLs) of a vector edit's answer, decoded."""
    out = {}
    for name, url in body["images"].items():
        if url:
            out[name] = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))).astype(int)
    return out


def _refined(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """A refinement job's result metrics, once it finished."""
    job = client.post("/edit/vector", json=body)
    assert job.status_code == 202, job.text
    for _ in range(1200):
        info: dict[str, Any] = client.get(job.json()["location"]).json()
        if info["status"] in ("finished", "failed", "stopped", "canceled"):
            break
        time.sleep(0.1)
    assert info["status"] == "finished", info.get("error")
    metrics: dict[str, Any] = info["result"]["metrics"]
    return metrics


def test_a_compiled_gateway_and_worker_answer_as_eager_ones(live: Live, tiny_models: Path, tmp_path: Path) -> None:
    port = free_port()
    # A queue of their own: the session's eager worker must not take the compiled gateway's jobs.
    env = service_env(LIVE_REDIS_URL, tiny_models, port, EDITGAN_COMPILE="true", EDITGAN_QUEUE="compiled")
    env["EDITGAN_LOG_LEVEL"] = "info"
    log = tmp_path / "compiled.log"
    procs = [start(["serve"], env, log), start(["worker"], env, log)]
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, procs, log, timeout=600)  # both compile first: a minute or two on 2 cores
        assert log.read_text().count("compiled model tiny") == 2, log.read_text()[-3000:]
        sample = live.http.post("/latents/sample", json={"model": "tiny", "seed": 3})
        assert sample.status_code == 201, sample.text
        # random weights: a vector of every class, so that a refinement's region is never empty
        delta = np.random.default_rng(5).normal(size=(1, 8, 32)).astype(np.float32) * 0.1
        npy = io.BytesIO()
        np.save(npy, delta)
        files = {"file": npy.getvalue()}
        saved = live.http.post("/vectors", data={"name": "compiled_every", "classes": "0,1,2,3,4"}, files=files)
        assert saved.status_code == 201, saved.text
        body = {
            "latent_id": sample.json()["latent_id"],
            "vectors": [{"vector": "compiled_every", "scale": 1.5}],
            "inline": True,
        }
        with httpx.Client(base_url=base_url, timeout=60) as compiled:
            answers = [client.post("/edit/vector", json=body) for client in (live.http, compiled)]
            assert [a.status_code for a in answers] == [200, 200], answers[1].text
            eager, fast = (_images(a.json()) for a in answers)
            assert set(eager) == set(fast) and {"image", "segmentation"} <= set(eager)
            assert np.abs(eager["image"] - fast["image"]).max() <= 1  # 8-bit rounding at most
            assert (eager["segmentation"] == fast["segmentation"]).mean() >= 0.99
            # A refinement runs the compiled worker's loop (forward and backward through the compiled graph)
            # and the eager worker's: the same losses, up to rounding that Adam carries over three updates.
            losses = [_refined(client, body | {"refine_steps": 3})["losses"] for client in (live.http, compiled)]
            assert losses[1].keys() == losses[0].keys() and "total" in losses[0]
            for term, value in losses[0].items():
                assert abs(losses[1][term] - value) <= 1e-4 * max(abs(value), 1e-3), (term, losses)
    finally:
        for p in procs:
            stop(p)
