"""The worker process's loaded state: set once by the worker's main, read by the job functions.

Jobs run inside the worker process (rq's SimpleWorker, no fork), so the bundles loaded before the work
loop stay resident, on the GPU when there is one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from redis import Redis

from engine import Bundle
from engine.perceptual import PerceptualLoss
from schemas.settings import Settings
from workers.registry import Registry
from workers.store import Store


@dataclass
class Runtime:
    settings: Settings
    redis: Redis
    bundles: dict[str, Bundle]
    store: Store
    registry: Registry
    shutdown: threading.Event = field(default_factory=threading.Event)  # set by SIGTERM

    def perceptual(self, bundle: Bundle) -> PerceptualLoss:
        return bundle.perceptual(lpips_backbone_path=self.settings.editgan_lpips_backbone)


_current: Runtime | None = None


def install(runtime: Runtime) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("no worker runtime: jobs run in `editgan worker` (models are loaded there)")
    return _current
