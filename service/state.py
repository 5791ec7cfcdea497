"""What the gateway holds for its lifetime: settings, Redis, stores, the queue and the loaded models."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis import Redis
from rq import Queue

from engine import Bundle
from schemas.errors import ErrorCode
from schemas.settings import Settings
from service.batching import MicroBatcher, RenderRequest
from service.errors import ApiError
from service.job_events import JobEvents
from workers.registry import Registry
from workers.store import Store

T = TypeVar("T")


@dataclass
class Services:
    settings: Settings
    redis: Redis
    store: Store
    registry: Registry
    queues: dict[str, Queue]  # per served model: its jobs' queue (`workers.queue.queue_name`)
    bundles: dict[str, Bundle]
    # One per model: concurrent synchronous renders of a model share one batched pass (service/batching.py),
    # which runs on the engine thread below, so engine calls never overlap.
    batchers: dict[str, MicroBatcher[RenderRequest, Any]] = field(default_factory=dict)
    # The caller's owner id (service/auth.py); None with keys off. Per request, `store` is scoped to it.
    owner: str | None = None
    # The one thread that runs the gateway's torch work (service/app.py says why); None: the caller's.
    engine: Executor | None = None
    # Wakes `GET /jobs/{id}?wait=` readers at their job's announcements (service/job_events.py).
    job_events: JobEvents | None = None

    def on_engine(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the engine thread, waited for."""
        if self.engine is None:
            return fn(*args, **kwargs)
        return self.engine.submit(fn, *args, **kwargs).result()

    def bundle(self, name: str | None) -> Bundle:
        """The named model; without a name, the only one served."""
        if name is None:
            if len(self.bundles) == 1:
                return next(iter(self.bundles.values()))
            raise ApiError(
                422, ErrorCode.validation_error, f"several models are served, name one of {sorted(self.bundles)}"
            )
        if name not in self.bundles:
            raise ApiError(404, ErrorCode.unknown_model, f"unknown model {name!r}; served: {sorted(self.bundles)}")
        return self.bundles[name]

    def render(self, model: str, request: RenderRequest) -> Any:
        """Render and segment one latent of a served model, batched with concurrent requests, and return
        `request.finish(rendering)`, run on the engine thread in the same pass."""
        return self.batchers[model].run(request)

    async def arender(self, model: str, request: RenderRequest) -> Any:
        """`render` awaited on the event loop: the engine thread hands the result straight back to the loop,
        with no request thread in between."""
        return await asyncio.wrap_future(self.batchers[model].submit(request))

    def preview_members(self, model: str) -> int:
        return preview_members(self.bundle(model), self.settings.editgan_preview_members)


def preview_members(bundle: Bundle, wanted: int) -> int:
    """How many ensemble members a preview uses (EDITGAN_PREVIEW_MEMBERS `wanted`; 0: all; never more than
    the bundle has)."""
    count = len(bundle.segmenter.classifiers())
    return count if wanted == 0 else min(wanted, count)
