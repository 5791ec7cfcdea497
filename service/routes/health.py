"""`/healthz` (the process answers), `/readyz` (it can do work) and `/metrics` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from redis import Redis
from redis.exceptions import ResponseError

from schemas.errors import ErrorCode, Readiness
from service.deps import ServicesDep
from service.errors import refuses_writes
from service.routes.common import ERRORS
from workers.queue import live_workers
from workers.store import PREFIX

PROBE_KEY = f"{PREFIX}:probe:writes"
NOT_READY = {"models": "no model loaded", "redis": "Redis unreachable"}

# No body or query: a 422 can only come from the key headers every route reads (ErrorBody, as elsewhere).
router = APIRouter(tags=["health"], responses={422: ERRORS[422]})


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: 200 while the process serves HTTP (on the event loop: a probe needs no thread-pool hop)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "Not ready."}})
def readyz(services: ServicesDep) -> JSONResponse:
    """Readiness: models loaded and Redis reachable (503 otherwise). Then `ready`, or `degraded` (still 200)
    with a `message` saying why:

    - a model has no live worker (`checks.workers`: the fewest on any model's queue): its jobs wait in the
      queue until one starts. Workers do not gate readiness: the gateway still serves real-time edits and
      queues jobs, and a worker fleet scaled to zero (KEDA's `minReplicaCount: 0`) would otherwise take
      every gateway out of rotation, so that no job could arrive to scale it up again;
    - Redis refuses writes (`checks.writes`: disk full, read-only replica, out of memory): reads keep working,
      and as every gateway shares the one Redis, taking them all out of rotation would only turn a partial
      outage into a full one.
    """
    checks: dict[str, bool | int] = {"models": bool(services.bundles)}
    notes, unserved = [], []
    try:
        checks["redis"] = bool(services.redis.ping())
        workers = {model: live_workers(queue) for model, queue in services.queues.items()}
        checks["workers"] = min(workers.values(), default=0)
        if unserved := sorted(model for model, count in workers.items() if not count):
            notes.append(f"no live worker for model {', '.join(unserved)}: its jobs wait in the queue")
        checks["writes"] = _writes_accepted(services.redis)
        if not checks["writes"]:
            notes.append("Redis refuses writes: reads only")
    except Exception:  # any Redis failure means not ready, never a 500
        checks["redis"], checks["workers"], checks["writes"] = False, 0, False
    failed = [text for name, text in NOT_READY.items() if not checks[name]]
    if not failed:
        status = "degraded" if notes else "ready"
        body = Readiness(
            status=status, checks=checks, message="; ".join(notes) or None, unserved_models=unserved or None
        )
        return JSONResponse(body.model_dump(exclude_none=True))
    body = Readiness(status="not_ready", checks=checks, code=ErrorCode.unavailable, message="; ".join(failed))
    return JSONResponse(body.model_dump(mode="json"), status_code=503, headers={"Retry-After": "5"})


def _writes_accepted(redis: Redis) -> bool:
    try:
        redis.set(PROBE_KEY, "1", ex=60)
    except ResponseError as exc:
        if refuses_writes(exc):
            return False
        raise
    return True


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, 401: ERRORS[401], 403: ERRORS[403]},
)
def metrics(request: Request) -> Response:
    """Prometheus exposition: request latencies, errors, queue depth, workers, job durations."""
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
