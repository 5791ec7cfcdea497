"""The real service for the HTTP sections: Redis (embedded unless a URL is given), `editgan serve` and
`editgan worker` as child processes, as `editgan up` and the tests run them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType

import httpx
from redis import Redis
from rq.worker import BaseWorker, Worker

from bench.timing import peak_rss_bytes
from service.embedded import EmbeddedRedis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Process:
    """One `editgan ...` child process with its log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.log = args, log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "service.cli", *args],
                env=os.environ | {"PYTHONUNBUFFERED": "1"} | env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"`editgan {' '.join(self.args)}` exited with {self.popen.returncode}:\n{tail}")

    def peak_rss(self) -> int | None:
        return peak_rss_bytes(self.pid)

    def stop(self, timeout: float = 30) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class Gateway:
    """A started `editgan serve` and its base URL."""

    def __init__(self, url: str, process: Process) -> None:
        self.url, self.process = url, process

    def wait(self, timeout: float = 180) -> str:
        """Block until the gateway answers (uvicorn answers only after the lifespan loaded the models)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.process.check_alive()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway not up after {timeout} s; see {self.process.log}")


class Service:
    """Redis plus the gateways and workers started through it; everything stops on exit.

    The processes get a queue of their own, so a bench against a shared Redis never takes, or hands out,
    anyone else's jobs.
    """

    def __init__(self, workdir: Path, env: dict[str, str], redis_url: str | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        # The run's data is thrown away: no append-only log, whose rewrites would compete for the cores measured
        self._embedded = EmbeddedRedis(workdir / "redis", persistent=False) if redis_url is None else None
        self.redis_url = redis_url or self._embedded.url  # type: ignore[union-attr]
        self.queue = f"bench-{uuid.uuid4().hex[:8]}"
        self.env = env | {"REDIS_URL": self.redis_url, "EDITGAN_QUEUE": self.queue}
        self.redis = Redis.from_url(self.redis_url)
        self.processes: list[Process] = []

    def __enter__(self) -> Service:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def gateway(self, name: str = "gateway", **settings: str) -> Gateway:
        """Start `editgan serve` with extra settings (returns at once; `Gateway.wait` waits for it)."""
        port = free_port()
        env = self.env | {"EDITGAN_HOST": "127.0.0.1", "EDITGAN_PORT": str(port)} | settings
        process = Process(["serve"], env, self.workdir / f"{name}.log")
        self.processes.append(process)
        return Gateway(f"http://127.0.0.1:{port}", process)

    def worker(self, name: str = "worker") -> Process:
        """Start `editgan worker` (returns at once; `wait_worker` waits for it to listen)."""
        process = Process(["worker", "--name", f"{self.queue}-{name}"], self.env, self.workdir / f"{name}.log")
        self.processes.append(process)
        return process

    def registered(self, process: Process) -> BaseWorker | None:
        """The worker's rq record once it has registered (after loading the models), else None."""
        process.check_alive()
        return next((w for w in Worker.all(connection=self.redis) if w.name.startswith(self.queue)), None)

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.redis.close()
        if self._embedded is not None:
            self._embedded.close()
