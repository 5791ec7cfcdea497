"""What the gateway holds for its lifetime: settings, Redis, stores, the queue and the loaded models."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from redis import Redis
from rq import Queue

from engine import Bundle
from schemas.errors import ErrorCode
from schemas.settings import Settings
from service.errors import ApiError
from workers.registry import Registry
from workers.store import Store


@dataclass
class Services:
    settings: Settings
    redis: Redis
    store: Store
    registry: Registry
    queue: Queue
    bundles: dict[str, Bundle]
    # One synchronous engine call per model at a time: on a CPU two would only share the same cores,
    # and the models' buffers are shared. (Micro-batching concurrent requests is the next step.)
    locks: dict[str, threading.Lock] = field(default_factory=dict)

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

    def lock(self, name: str) -> threading.Lock:
        return self.locks.setdefault(name, threading.Lock())
