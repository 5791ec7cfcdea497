"""Issue 9, load in a bounded form (scripts/load.py runs 200 clients for 60 s): concurrent vector edits and
job submissions against real processes, a queue bound small enough to answer deliberate 429s, then a drain.
Nothing may fail but those 429s, and every accepted job must reach a terminal state."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np

from tests.loading import LoadConfig, run_load
from tests.processes import RedisServer, free_port, service_env, start, stop, wait_ready


def test_concurrent_edits_and_jobs_fail_nothing_but_deliberate_429s_and_lose_no_job(
    tiny_models: Path, tmp_path: Path
) -> None:
    (tmp_path / "redis").mkdir()
    log = tmp_path / "stack.log"
    server = RedisServer(tmp_path / "redis", log)
    server.start()
    port = free_port()
    env = service_env(server.url, tiny_models, port, EDITGAN_MAX_QUEUED_JOBS="4", EDITGAN_MAX_QUEUED_PER_KEY="4")
    procs = [start(["serve"], env, log), start(["worker"], env, log)]
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, procs, log)
        buf = io.BytesIO()
        np.save(buf, np.random.default_rng(0).normal(size=(8, 32)).astype(np.float32))
        uploaded = httpx.post(
            f"{base_url}/vectors", data={"name": "load", "classes": "1"}, files={"file": ("v.npy", buf.getvalue())}
        )
        assert uploaded.status_code == 201, uploaded.text
        cfg = LoadConfig(clients=24, seconds=6, warmup_seconds=1, job_share=0.3, drain_timeout=120)
        pids = {"gateway": procs[0].pid, "worker": procs[1].pid}
        report = run_load(base_url, cfg, pids, vector="load", model="tiny")
    finally:
        for p in procs:
            stop(p)
        server.stop()
    assert report["failed"] == 0, report["failures"]
    assert report["lost"] == 0, report["jobs"]
    assert report["vector_edit_ms"]["count"] > 0 and report["jobs"]["accepted"] > 0, report
    assert report["rate_limited"] > 0, report["statuses"]  # the queue bound was reached and answered 429
    assert report["jobs"].get("finished", 0) == report["jobs"]["accepted"], report["jobs"]
