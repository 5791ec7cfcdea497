"""Issue 9, faults of Redis itself, against real processes: a private redis-server (AOF, `everysec` as deployed),
`editgan serve` and `editgan worker`.

- Redis restarted under load: the registry and every accepted job survive, the gateway answers 503 while it
  is down and reconnects by itself, readiness flips false then true, the worker finishes every job.
- Redis's disk full (a tmpfs filled to the last byte): writes answer 503 `storage_unavailable`, reads keep
  working, nothing half-written remains, and writes resume once space is freed.
- Redis turned into a read-only replica: the same, through Redis's READONLY refusal.
"""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.processes import RedisServer, free_port, service_env, start, stop, wait_ready

TERMINAL = ("finished", "failed", "stopped", "canceled")


@dataclass
class Stack:
    redis: RedisServer
    base_url: str
    log: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


def stack_on(data_dir: Path, models: Path, log: Path, *, worker: bool) -> Stack:
    server = RedisServer(data_dir, log)
    server.start()
    port = free_port()
    env = service_env(server.url, models, port, EDITGAN_MAX_STEPS="5000", EDITGAN_HEARTBEAT_TTL="10")
    s = Stack(server, f"http://127.0.0.1:{port}", log, [start(["serve"], env, log)])
    if worker:
        s.procs.append(start(["worker"], env, log))
    wait_ready(s.base_url, s.procs, log, path="/readyz" if worker else "/healthz")
    return s


def teardown(s: Stack) -> None:
    for p in s.procs:
        stop(p)
    s.redis.stop()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array.astype(np.float32))
    return buf.getvalue()


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def upload(http: httpx.Client, name: str, seed: int) -> httpx.Response:
    array = np.random.default_rng(seed).normal(size=(8, 32))
    return http.post("/vectors", data={"name": name, "classes": "1"}, files={"file": ("v.npy", npy(array))})


def registry(http: httpx.Client) -> dict[str, tuple[int, bytes]]:
    """Every registry vector: name -> (latest version, its .npy bytes)."""
    vectors = http.get("/vectors", params={"model": "tiny"}).json()["vectors"]
    out = {}
    for v in vectors:
        if v["version"] > 0:
            data = http.get(f"/vectors/tiny/{v['name']}/npy", params={"version": v["version"]})
            assert data.status_code == 200, data.text
            out[v["name"]] = (v["version"], data.content)
    return out


def wait_status(http: httpx.Client, path: str, status: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http.get(path, timeout=5).status_code == status:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{path} did not answer {status} within {timeout} s")


def wait_terminal(http: httpx.Client, location: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info: dict[str, Any] = http.get(location).json()
        if info.get("status") in TERMINAL:
            return info
        time.sleep(0.2)
    raise AssertionError(f"job {location} not terminal after {timeout} s")


@pytest.fixture
def restartable(tiny_models: Path, tmp_path: Path) -> Iterator[Stack]:
    (tmp_path / "redis").mkdir()
    s = stack_on(tmp_path / "redis", tiny_models, tmp_path / "stack.log", worker=True)
    try:
        yield s
    finally:
        teardown(s)


def test_redis_restart_under_load_loses_no_vector_and_no_accepted_job(restartable: Stack) -> None:
    s = restartable
    with httpx.Client(base_url=s.base_url, timeout=30) as http:
        for i in range(3):
            assert upload(http, f"kept-{i}", i).status_code == 201
        assert upload(http, "kept-0", 10).status_code == 201  # a second version
        before = registry(http)
        latent = http.post("/latents/sample", json={"model": "tiny", "seed": 1}).json()["latent_id"]
        # Long enough that some are still queued when Redis goes down.
        accepted = [http.post("/invert", files={"image": ("i.png", png(i))}, data={"steps": "150"}) for i in range(4)]
        assert all(r.status_code == 202 for r in accepted), [r.text for r in accepted]
        jobs = [r.headers["Location"] for r in accepted]

        statuses: list[tuple[float, int, str]] = []
        halt = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=s.base_url, timeout=30) as client:
                i = 0
                while not halt.is_set():
                    i += 1
                    try:
                        if i % 8 == 0:
                            r = client.post("/invert", files={"image": ("i.png", png(100 + i))}, data={"steps": "5"})
                            if r.status_code == 202:
                                jobs.append(r.headers["Location"])
                        else:
                            body = {"latent_id": latent, "vectors": [{"vector": "kept-1", "scale": 1.0}]}
                            r = client.post("/edit/vector", json=body)
                        code = r.json().get("code", "") if r.status_code >= 400 else ""
                        statuses.append((time.monotonic(), r.status_code, code))
                    except httpx.HTTPError as exc:  # the gateway itself must never drop a connection
                        statuses.append((time.monotonic(), -1, repr(exc)))
                    time.sleep(0.02)

        loader = threading.Thread(target=load)
        loader.start()
        try:
            time.sleep(1.5)
            s.redis.stop()  # SIGTERM: Redis flushes its AOF and exits, as in a rolling restart
            wait_status(http, "/readyz", 503, timeout=15)
            down = time.monotonic()
            time.sleep(1.0)
            s.redis.start()
            wait_status(http, "/readyz", 200, timeout=90)
            up = time.monotonic()
            time.sleep(2.0)
        finally:
            halt.set()
            loader.join()

        bad = [x for x in statuses if x[1] not in (200, 202, 503) or (x[1] == 503 and x[2] != "unavailable")]
        assert not bad, bad[:5]
        assert any(code == 503 for _, code, _ in statuses), "the outage was never seen"
        after_up = [code for t, code, _ in statuses if t > up + 0.5]
        assert after_up and all(code in (200, 202) for code in after_up), after_up
        assert any(t < down and code == 200 for t, code, _ in statuses)

        assert registry(http) == before  # every version, byte for byte
        for location in jobs:
            info = wait_terminal(http, location, timeout=240)
            assert info["status"] == "finished", info

        # The gateway's subscription to job announcements came back with Redis: a long poll of a running job
        # answers at its next progress write, not at the end of its wait.
        location = http.post("/invert", files={"image": ("i.png", png(99))}, data={"steps": "3000"}).headers["Location"]
        deadline = time.monotonic() + 60
        while http.get(location).json()["progress"]["step"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        start = time.monotonic()
        assert http.get(location, params={"wait": 20}).json()["status"] == "started"
        assert time.monotonic() - start < 5, "no announcement reached the gateway after the restart"
        assert http.delete(location).status_code == 200


def test_the_first_vector_edit_after_a_redis_restart_is_served(restartable: Stack) -> None:
    """The real-time route's pooled connections die with the server: the first request on one must retry on
    a fresh connection, not answer 503."""
    s = restartable
    with httpx.Client(base_url=s.base_url, timeout=30) as http:
        assert upload(http, "warm", 3).status_code == 201
        latent = http.post("/latents/sample", json={"model": "tiny", "seed": 2}).json()["latent_id"]
        body = {"latent_id": latent, "vectors": [{"vector": "warm", "scale": 0.5}]}
        assert http.post("/edit/vector", json=body).status_code == 200  # the pool now holds a connection
        s.redis.stop()
        wait_status(http, "/readyz", 503, timeout=15)
        s.redis.start()
        wait_status(http, "/readyz", 200, timeout=90)  # the sync client's check: the async pool is untouched
        first = http.post("/edit/vector", json=body)
        assert first.status_code == 200, first.text


def test_a_job_running_through_an_outage_longer_than_its_heartbeat_ttl_is_not_taken_for_lost(
    restartable: Stack,
) -> None:
    """While Redis is down no worker can refresh a heartbeat: the gateway must not sweep the job as lost
    (run it again, or fail it) the moment Redis is back."""
    s = restartable
    with httpx.Client(base_url=s.base_url, timeout=30) as http:
        location = http.post("/invert", files={"image": ("i.png", png(7))}, data={"steps": "5000"}).headers["Location"]
        deadline = time.monotonic() + 60
        while http.get(location).json()["progress"]["step"] < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        s.redis.stop()
        time.sleep(13)  # longer than EDITGAN_HEARTBEAT_TTL (10 s) plus a sweep
        s.redis.start()
        wait_status(http, "/readyz", 200, timeout=90)
        seen: list[tuple[str, int]] = []
        until = time.monotonic() + 20  # past the TTL and several sweeps
        while time.monotonic() < until:
            info = http.get(location).json()
            seen.append((info["status"], info["progress"]["step"]))
            if info["status"] != "started":
                break
            time.sleep(0.25)
        assert {status for status, _ in seen} == {"started"}, seen[-5:]
        steps = [step for _, step in seen]
        assert steps == sorted(steps) and steps[-1] > steps[0], "the job restarted or stalled"
        assert http.delete(location).status_code == 200
        final = wait_terminal(http, location, timeout=60)
        assert final["status"] == "stopped" and final["error"]["code"] == "cancelled", final


@pytest.fixture
def full_disk(tiny_models: Path, tmp_path: Path) -> Iterator[tuple[Stack, Path]]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.fail(f"this test needs to mount a small tmpfs (root): {mounted.stderr.decode().strip()}")
    try:
        s = stack_on(disk, tiny_models, tmp_path / "stack.log", worker=False)
        try:
            yield s, disk
        finally:
            teardown(s)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def refused(response: httpx.Response) -> bool:
    if response.status_code != 503:
        return False
    body = response.json()
    assert body["code"] == "storage_unavailable" and "refuses writes" in body["message"], body
    assert response.headers["Retry-After"]
    return True


def test_a_full_disk_refuses_writes_with_503_keeps_reads_and_leaves_nothing_half_written(
    full_disk: tuple[Stack, Path],
) -> None:
    s, disk = full_disk
    with httpx.Client(base_url=s.base_url, timeout=30) as http:
        for i in range(3):
            assert upload(http, f"before-{i}", i).status_code == 201
        latent = http.post("/latents/sample", json={"model": "tiny", "seed": 2}).json()
        before = registry(http)
        time.sleep(1.5)  # everysec: the AOF now holds all of it

        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # fill the disk to the last byte
            for chunk in (65536, 1):
                try:
                    while os.write(fd, b"\0" * chunk):
                        pass
                except OSError:
                    pass
        finally:
            os.close(fd)

        # Redis keeps a write it could not log in memory and refuses every later one; the first refusal
        # comes at most a couple of writes (and one second of `everysec`) later.
        saved_while_full: list[str] = []
        answers = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            name = f"during-{len(answers)}"
            r = upload(http, name, 50 + len(answers))
            answers.append(r)
            if refused(r):
                break
            assert r.status_code == 201, r.text
            saved_while_full.append(name)
            time.sleep(0.3)
        assert answers and refused(answers[-1]), [a.text for a in answers]
        ready = http.get("/readyz").json()
        assert ready["checks"]["writes"] is False and ready["status"] in ("degraded", "not_ready"), ready

        # Every kind of write is refused cleanly; reads keep working.
        assert refused(http.post("/latents/sample", json={"model": "tiny", "seed": 3}))
        assert refused(http.delete("/vectors/tiny/before-0"))
        assert refused(upload(http, "before-1", 99))
        assert http.get(f"/latents/{latent['latent_id']}").status_code == 200
        now = registry(http)
        assert {k: now[k] for k in before} == before
        assert set(now) == set(before) | set(saved_while_full)  # no half-written vector, no ghost name

        filler.unlink()  # space again: Redis retries its log every second and accepts writes once it is written
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and refused(r := upload(http, "after", 7)):
            time.sleep(0.5)
        assert r.status_code == 201, r.text
        assert http.get("/readyz").json()["checks"]["writes"] is True
        expected = registry(http)

    s.redis.stop()  # and everything acknowledged is on disk: a restart from the AOF gives it back
    s.redis.start()
    with httpx.Client(base_url=s.base_url, timeout=30) as http:
        wait_status(http, "/vectors", 200, timeout=30)
        assert registry(http) == expected


def test_a_read_only_redis_refuses_writes_with_503_and_keeps_reads(tiny_models: Path, tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    s = stack_on(tmp_path / "redis", tiny_models, tmp_path / "stack.log", worker=False)
    try:
        with httpx.Client(base_url=s.base_url, timeout=30) as http:
            assert upload(http, "kept", 1).status_code == 201
            before = registry(http)
            import redis

            admin = redis.Redis.from_url(s.redis.url)
            admin.replicaof("127.0.0.1", free_port())  # a replica of a master that is down: read-only, data kept
            try:
                assert refused(upload(http, "new", 2))
                assert refused(upload(http, "kept", 3))
                assert refused(http.post("/latents/sample", json={"model": "tiny", "seed": 3}))
                assert http.get("/readyz").json()["checks"]["writes"] is False
                assert registry(http) == before
            finally:
                admin.replicaof("NO", "ONE")
                admin.close()
            assert upload(http, "new", 2).status_code == 201
            assert registry(http)["kept"] == before["kept"]
    finally:
        teardown(s)
