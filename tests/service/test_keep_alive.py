"""Idle HTTP connections: the gateway must outlast its clients' idle timeouts (EDITGAN_KEEP_ALIVE).

When the gateway and a client give up on an idle connection after the same time (uvicorn's and httpx's
default: 5 s), a request the client sends just as the gateway closes is lost: the client reads a reset.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.processes import gateway_alone
from tests.service.conftest import Live

HTTPX_IDLE_EXPIRY = 5.0  # httpx.Limits' keepalive_expiry default, uvicorn's timeout_keep_alive default too


def _connect(base_url: str) -> socket.socket:
    parts = urlsplit(base_url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10)


def _get_healthz(sock: socket.socket) -> bytes:
    """One keep-alive GET /healthz on `sock`: the whole answer, or b"" when the gateway has closed it."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return b""
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return b""  # closed in mid-answer
        body += chunk
    return head + b"\r\n\r\n" + body


def test_an_idle_connection_outlives_the_clients_own_idle_timeout(live: Live) -> None:
    with _connect(live.base_url) as sock:
        assert _get_healthz(sock).startswith(b"HTTP/1.1 200")
        time.sleep(HTTPX_IDLE_EXPIRY + 1.5)
        # still open: the same socket answers (uvicorn's default would have closed it after 5 s)
        assert _get_healthz(sock).startswith(b"HTTP/1.1 200")


def test_the_gateway_closes_connections_idle_longer_than_the_setting(
    redis_url: str, tiny_models: Path, tmp_path: Path
) -> None:
    log = tmp_path / "gateway.log"
    with gateway_alone(redis_url, tiny_models, log, EDITGAN_KEEP_ALIVE="1") as url, _connect(url) as sock:
        assert _get_healthz(sock).startswith(b"HTTP/1.1 200")
        time.sleep(2.5)
        sock.settimeout(1)  # 3.5 s in all: under the 5 s that uvicorn would wait by default
        assert sock.recv(1) == b""  # the gateway closed it: end of stream, nothing sent
