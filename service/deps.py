"""Annotated dependencies: routes declare what they need and read like prose."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from service.auth import ALWAYS_PUBLIC, Authenticator, Caller, presented_key
from service.ratelimit import RateLimiter
from service.state import Services

UNLIMITED_PATHS = ("/healthz", "/readyz", "/metrics")  # probes and scrapers are not rate limited


# Both dependencies are `async def`: a plain `def` dependency costs every request a hop to the thread pool
# and back, which on 2 cores was a measurable part of a 20 ms vector edit. Only Redis calls leave the loop.


async def authenticate(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Caller:
    """Who calls (401/403 when a key is needed and missing or wrong); then their rate limit (429)."""
    auth: Authenticator = request.app.state.auth
    client = request.client.host if request.client else "unknown"
    # With keys off the headers are not read: a proxy's own `Authorization: Basic ...` must not fail requests;
    # nor on the always-public paths, whose probes may pass through such a proxy.
    public = request.url.path in ALWAYS_PUBLIC
    presented = presented_key(authorization, x_api_key) if auth.enabled and not public else None
    caller = auth.identify(request.method, request.url.path, presented, client)
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is not None and request.url.path not in UNLIMITED_PATHS:
        await run_in_threadpool(limiter.check, request.app.state.services.redis, caller.rate_id)
    return caller


CallerDep = Annotated[Caller, Depends(authenticate)]


async def get_services(request: Request, caller: CallerDep) -> Services:
    """The gateway's services as this caller sees them: the store reads and writes as its owner."""
    services: Services = request.app.state.services
    return dataclasses.replace(services, store=services.store.scoped(caller.owner), owner=caller.owner)


ServicesDep = Annotated[Services, Depends(get_services)]
