"""Request ids: every answer carries `X-Request-ID`, and every gateway log line written while handling the
request names it, so that an id from a user's report finds the server's lines (a traceback included).

The id is the caller's own `X-Request-ID` (a proxy's or a client's) when it is a short token that is safe
in a header and a log line, else a new random one. Each request runs in a task of its own, whose context
holds the id: nothing resets it, so the server-error middleware outside this one still logs under it.
"""

from __future__ import annotations

import copy
import logging
import re
import secrets
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
_RAW_HEADER = HEADER.lower().encode()
_TOKEN = re.compile(rb"[A-Za-z0-9._:@+=-]{1,128}")  # no spaces, quotes or control characters
current: ContextVar[str | None] = ContextVar("request_id", default=None)


def new_id() -> str:
    return secrets.token_hex(8)


def accepted_id(value: bytes | None) -> str:
    """The caller's id when it is a safe token, else a new one."""
    return value.decode() if value is not None and _TOKEN.fullmatch(value) else new_id()


class RequestIdMiddleware:
    """Sets the request's id for its task and adds `X-Request-ID` to its answer.

    Answers made outside this middleware (the 500 of an unhandled exception, by Starlette's server-error
    middleware) get the header from the error handler itself (`service.errors`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == _RAW_HEADER), None)
        request_id = accepted_id(given)
        current.set(request_id)
        header = (_RAW_HEADER, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if all(name.lower() != _RAW_HEADER for name, _ in headers):
                    message = {**message, "headers": [*headers, header]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class RequestIdFilter(logging.Filter):
    """Gives each record `request`: " request=<id>" while a request is handled, "" otherwise."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current.get()
        record.request = f" request={request_id}" if request_id else ""
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's logging configuration with the request id at the end of its lines, access log included."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"request_id": {"()": RequestIdFilter}}
    for handler in config["handlers"].values():
        handler["filters"] = ["request_id"]
        config["formatters"][handler["formatter"]]["fmt"] += "%(request)s"
    return config
