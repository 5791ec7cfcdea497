"""`/healthz` (the process answers), `/readyz` (it can do work) and `/metrics` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from rq import Worker

from service.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: 200 while the process serves HTTP."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready; `checks` says why."}})
def readyz(services: ServicesDep) -> JSONResponse:
    """Readiness: models loaded, Redis reachable, at least one live worker on the queue."""
    checks: dict[str, bool | int] = {"models": bool(services.bundles)}
    try:
        checks["redis"] = bool(services.redis.ping())
        checks["workers"] = Worker.count(connection=services.redis, queue=services.queue)
    except Exception:  # any Redis failure means not ready, never a 500
        checks["redis"], checks["workers"] = False, 0
    ready = bool(checks["models"] and checks["redis"] and checks["workers"])
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    """Prometheus exposition: request latencies, errors, queue depth, workers, job durations."""
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
