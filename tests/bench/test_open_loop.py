"""`bench.vector.open_loop` against a real HTTP server on a socket: every scheduled request is sent, failures
(an error status, a connection dropped without an answer) are counted, and each latency runs from the
request's scheduled time."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.vector import open_loop

DELAY = 0.02  # seconds each answer takes


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the gateway
    counter = itertools.count()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        n = next(self.counter)
        time.sleep(DELAY)
        if n % 5 == 3:  # hang up without an answer
            self.close_connection = True
            self.wfile.flush()
            self.connection.close()
            return
        status = 503 if n % 5 == 1 else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_every_scheduled_request_is_sent_failures_counted_latency_from_the_schedule(url: str) -> None:
    rate, seconds, seed = 40.0, 1.0, 3
    draw, due, scheduled = random.Random(seed), 0.0, 0
    while due < seconds:  # the same Poisson schedule open_loop draws
        scheduled += 1
        due += draw.expovariate(rate)
    latencies, errors = open_loop(url, {"x": 1}, rate, seconds, seed=seed)
    assert len(latencies) + errors == scheduled
    assert errors >= scheduled * 2 // 5 - 2  # every 503 and every hang-up, within the count's rounding
    assert latencies and min(latencies) >= DELAY  # the server's own time at least
