"""X-Request-ID: on every answer (errors included), the caller's own when it is a safe token, and at the end
of the gateway's log lines for that request, so that a user's report finds the server's lines."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.errors import install_error_handlers
from service.request_id import HEADER, RequestIdFilter, RequestIdMiddleware, accepted_id
from tests.processes import gateway_alone

GENERATED = re.compile(r"[0-9a-f]{16}")


def test_a_gateway_answers_and_logs_under_the_callers_id_or_its_own(
    redis_url: str, tiny_models: Path, tmp_path: Path
) -> None:
    log = tmp_path / "gateway.log"
    with (
        gateway_alone(redis_url, tiny_models, log, EDITGAN_LOG_LEVEL="info") as url,
        httpx.Client(base_url=url) as http,
    ):
        given = http.get("/models/tiny", headers={HEADER: "trace-me.42"})
        assert given.status_code == 200 and given.headers[HEADER] == "trace-me.42"
        fresh = [http.get("/healthz").headers[HEADER] for _ in range(2)]
        assert all(GENERATED.fullmatch(i) for i in fresh) and fresh[0] != fresh[1]
        unsafe = http.get("/healthz", headers={HEADER: "two words"})  # spaces could forge log fields
        assert GENERATED.fullmatch(unsafe.headers[HEADER])
        refused = http.post("/edit/vector", json={"latent_id": "nope"}, headers={HEADER: "bad-body-7"})
        assert refused.status_code == 422 and refused.headers[HEADER] == "bad-body-7"
        missing = http.get("/latents/lat_AAAAAAAAAAAAAAAAAAAAAA", headers={HEADER: "missing-8"})
        assert missing.status_code == 404 and missing.headers[HEADER] == "missing-8"
        deadline = time.monotonic() + 10
        while "request=missing-8" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)  # the access log is written as the answer starts
    lines = log.read_text().splitlines()
    for request_id, path in (
        ("trace-me.42", "/models/tiny"),
        ("bad-body-7", "/edit/vector"),
        ("missing-8", "/latents/"),
    ):
        assert any(path in line and line.endswith(f"request={request_id}") for line in lines), (request_id, lines[-20:])
    assert not any("two words" in line for line in lines)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(RequestIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_an_unhandled_error_answers_500_with_the_id_and_logs_its_traceback_under_it() -> None:
    # In process: no route of the service fails on purpose. The 500 comes from Starlette's server-error
    # middleware, outside the request-id middleware, which is why the error handler adds the header itself.
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    app.add_middleware(RequestIdMiddleware)
    records = _Records()
    logger = logging.getLogger("service.errors")
    logger.addHandler(records)

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.get("/boom", headers={HEADER: "report-9"})

    try:
        answer = asyncio.run(call())
    finally:
        logger.removeHandler(records)
    assert answer.status_code == 500 and answer.json()["code"] == "internal_error"
    assert answer.headers[HEADER] == "report-9"
    (record,) = [r for r in records.records if r.exc_info]
    assert record.request == " request=report-9"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("given", "kept"),
    [(b"abc-DEF_1.2:3@x+y=z", True), (b"", False), (b"a" * 129, False), (b"a\tb", False), (b'a"b', False)],
)
def test_only_short_safe_tokens_are_kept(given: bytes, kept: bool) -> None:
    result = accepted_id(given)
    assert (result == given.decode()) is kept
    if not kept:
        assert GENERATED.fullmatch(result)
