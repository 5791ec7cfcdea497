"""Prometheus metrics of the gateway: HTTP instruments, an ASGI middleware, and a Redis-backed collector.

Process-local instruments (request durations, in-flight requests, errors) live in a private
`CollectorRegistry` per `ServiceMetrics`, never the global default one, so several apps in one process
(tests) do not collide. Queue, worker and job figures are shared by every gateway replica, so they are
read from Redis at scrape time by `QueueCollector` instead of being counted here. The process's own
resident memory and CPU time (prometheus_client's `process_*` series) and, with models on a GPU, the GPU
memory torch holds (`DeviceMemoryCollector`) are read at scrape time too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from redis import Redis, RedisError
from rq import Queue
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.memory import usage_bytes
from service.job_events import JobEvents
from workers.queue import live_workers
from workers.stats import read_job_stats

log = logging.getLogger(__name__)

# Seconds: synchronous edits take tens of ms, uploads and job submissions well under 10 s.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Anything else a client sends would mint a new label value per request.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class _Snapshot:
    depth: int
    registries: dict[str, int]
    workers: int


def _snapshot(queue: Queue) -> _Snapshot:
    # cleanup=False: a scrape must only read; rq's own maintenance moves expired started jobs.
    registries = {
        "started": queue.started_job_registry.get_job_count(cleanup=False),
        "failed": queue.failed_job_registry.get_job_count(cleanup=False),
        "finished": queue.finished_job_registry.get_job_count(cleanup=False),
        "canceled": queue.canceled_job_registry.get_job_count(cleanup=False),
    }
    return _Snapshot(depth=queue.count, registries=registries, workers=live_workers(queue))


class QueueCollector:
    """Reads queue depth, rq registry sizes, live workers and job statistics from Redis on every scrape.

    A scrape never raises: if Redis cannot be reached, only ``editgan_redis_up 0`` is exported. The client
    returned by `redis_factory` should carry a socket timeout so that a hung Redis cannot stall a scrape.
    """

    def __init__(
        self, redis_factory: Callable[[], Redis], queue_names: Callable[[], Iterable[str]], prefix: str = "editgan"
    ) -> None:
        """`queue_names`: the queues to report now (one per served model; none before the models load)."""
        self.redis_factory = redis_factory
        self.queue_names = queue_names
        self.prefix = prefix

    def describe(self) -> Iterable[Metric]:
        """Names only (no Redis access), so registering the collector checks for name clashes."""
        yield GaugeMetricFamily("editgan_redis_up", "")
        yield GaugeMetricFamily("editgan_queue_depth", "")
        yield GaugeMetricFamily("editgan_queue_registry_jobs", "")
        yield GaugeMetricFamily("editgan_workers", "")
        yield HistogramMetricFamily("editgan_job_duration_seconds", "")
        yield CounterMetricFamily("editgan_jobs", "")

    def collect(self) -> Iterable[Metric]:
        """One scrape: read everything first, so a failure half-way exports no partial figures."""
        up = GaugeMetricFamily("editgan_redis_up", "1 if the gateway could read Redis during this scrape")
        try:
            redis = self.redis_factory()
            snapshots = {name: _snapshot(Queue(name, connection=redis)) for name in sorted(set(self.queue_names()))}
            stats = read_job_stats(redis, prefix=self.prefix)
        except (RedisError, OSError) as exc:
            log.warning("metrics scrape could not read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        labels = ["queue"]
        depth = GaugeMetricFamily("editgan_queue_depth", "Jobs waiting in the rq queue", labels=labels)
        regs = GaugeMetricFamily(
            "editgan_queue_registry_jobs", "Jobs in the queue's rq registries", labels=["queue", "registry"]
        )
        workers = GaugeMetricFamily("editgan_workers", "Live rq workers listening on the queue", labels=labels)
        for queue, snapshot in snapshots.items():
            depth.add_metric([queue], snapshot.depth)
            for name, size in snapshot.registries.items():
                regs.add_metric([queue, name], size)
            workers.add_metric([queue], snapshot.workers)
        yield depth
        yield regs
        yield workers

        duration = HistogramMetricFamily(
            "editgan_job_duration_seconds", "Run time of jobs, all workers together", labels=["kind"]
        )
        totals = CounterMetricFamily("editgan_jobs", "Job runs by kind and outcome", labels=["kind", "status"])
        for kind, ks in stats.kinds.items():
            buckets = [(_le(bound), float(count)) for bound, count in ks.buckets]
            duration.add_metric([kind], buckets, ks.sum)
            for status, count in ks.statuses.items():
                totals.add_metric([kind, status], count)
        yield duration
        yield totals


class DeviceMemoryCollector:
    """GPU memory torch holds in this process for each device the models are on, read at every scrape:
    `editgan_device_memory_bytes{device, kind}` with kind allocated (by tensors now), reserved (cached by
    torch's allocator: what the GPU sees taken) and peak (allocated, at most, since start-up). Nothing on a
    CPU, whose figure is `process_resident_memory_bytes`."""

    def __init__(
        self,
        devices: Callable[[], Iterable[torch.device]],
        usage: Callable[[torch.device], dict[str, int] | None] = usage_bytes,
    ) -> None:
        self.devices, self.usage = devices, usage

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("editgan_device_memory_bytes", "")

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "editgan_device_memory_bytes", "GPU memory held by torch in this process", labels=["device", "kind"]
        )
        for device in sorted({str(d) for d in self.devices()}):
            for kind, value in (self.usage(torch.device(device)) or {}).items():
                family.add_metric([device, kind], value)
        if family.samples:
            yield family


class JobWaitsCollector:
    """The gateway's open long polls (`GET /jobs/{id}?wait=`) and whether its subscription to job
    announcements is live (service/job_events.py), read at every scrape; nothing before the models load."""

    def __init__(self, events: Callable[[], JobEvents | None]) -> None:
        self.events = events

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("editgan_job_waiters", "")
        yield GaugeMetricFamily("editgan_job_events_subscribed", "")

    def collect(self) -> Iterable[Metric]:
        events = self.events()
        if events is None:
            return
        yield GaugeMetricFamily(
            "editgan_job_waiters", "Open long polls of GET /jobs/{id}?wait= in this gateway", value=events.waiting
        )
        yield GaugeMetricFamily(
            "editgan_job_events_subscribed",
            "1 while this gateway's subscription to job announcements is live (else long polls wait out their time)",
            value=int(events.subscribed.is_set()),
        )


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class ServiceMetrics:
    """The gateway's metrics: a private registry, the HTTP instruments and the Redis collector."""

    def __init__(
        self,
        redis_factory: Callable[[], Redis],
        queue_names: Callable[[], Iterable[str]],
        prefix: str = "editgan",
        devices: Callable[[], Iterable[torch.device]] = tuple,
        job_events: Callable[[], JobEvents | None] = lambda: None,
    ) -> None:
        """`devices`: the devices the gateway's models are on now (none before they load); `job_events`: the
        gateway's long-poll hub, once it exists."""
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.request_duration = Histogram(
            "editgan_http_request_duration_seconds",
            "HTTP request latency by method, route template and status",
            ["method", "route", "status"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.requests_in_flight = Gauge(
            "editgan_http_requests_in_flight", "HTTP requests being served now", registry=self.registry
        )
        self.errors = Counter(
            "editgan_http_errors",
            "Error responses by error code and HTTP status",
            ["code", "status"],
            registry=self.registry,
        )
        self.vector_batch_size = Histogram(
            "editgan_vector_batch_size",
            "Synchronous vector edits served by one batched generator + segmentation pass",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.collector = QueueCollector(redis_factory, queue_names, prefix)
        self.registry.register(self.collector)
        self.registry.register(DeviceMemoryCollector(devices))
        self.registry.register(JobWaitsCollector(job_events))

    def render(self) -> tuple[bytes, str]:
        """The text exposition of every metric and its content type, for the /metrics route."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def record_error(metrics: ServiceMetrics, code: str, status: int) -> None:
    """Count one error response; called by the app's exception handlers with the body's `code`."""
    metrics.errors.labels(code=code, status=str(status)).inc()


class MetricsMiddleware:
    """Pure ASGI middleware timing each HTTP request by method, route template and status.

    The route label is the matched template (``/jobs/{job_id}``), never the raw path, so the number of series
    stays bounded; requests that match no route are labelled ``unmatched``. Starlette's router writes the
    matched route into the shared scope, so it is read after the downstream app has run.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # if the app raises before starting a response, the server answers 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        method = scope["method"] if scope["method"] in HTTP_METHODS else "OTHER"
        start = time.perf_counter()
        self.metrics.requests_in_flight.inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.requests_in_flight.dec()
            path = getattr(scope.get("route"), "path", None)
            route = path if isinstance(path, str) and path else "unmatched"
            self.metrics.request_duration.labels(method=method, route=route, status=str(status)).observe(elapsed)
