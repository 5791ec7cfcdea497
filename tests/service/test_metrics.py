"""Gateway metrics: the ASGI middleware on a real FastAPI app, the collector on a real Redis and rq queue."""

from __future__ import annotations

import time

import redis
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue, Worker

from service.metrics import DeviceMemoryCollector, MetricsMiddleware, ServiceMetrics, record_error
from workers.stats import read_job_stats, record_job

QUEUE = "editgan-test"


def _samples(metrics: ServiceMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse the text exposition, as Prometheus would, into {(sample name, labels): value}."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


class ItemMissingError(Exception):
    pass


def _app(metrics: ServiceMetrics) -> FastAPI:
    app = FastAPI()
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(ItemMissingError)
    async def item_missing(request: Request, exc: ItemMissingError) -> JSONResponse:
        record_error(metrics, "not_found", 404)
        return JSONResponse({"code": "not_found", "message": str(exc)}, status_code=404)

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        if item_id < 0:
            raise ItemMissingError(f"no item {item_id}")
        return {"item_id": item_id}

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("unhandled")

    return app


def test_middleware_labels_by_route_template(redis_client: redis.Redis) -> None:
    metrics = ServiceMetrics(lambda: redis_client, lambda: [QUEUE])
    with TestClient(_app(metrics), raise_server_exceptions=False) as client:
        ok = [client.get(f"/items/{i}") for i in (1, 22, 333)]
        missing = client.get("/items/-5")
        crashed = client.get("/crash")
        unknown = client.get("/no/such/path/42")
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert (missing.status_code, crashed.status_code, unknown.status_code) == (404, 500, 404)

    samples = _samples(metrics)
    count = "editgan_http_request_duration_seconds_count"
    assert _value(samples, count, method="GET", route="/items/{item_id}", status="200") == len(ok)
    assert _value(samples, count, method="GET", route="/items/{item_id}", status="404") == 1
    assert _value(samples, count, method="GET", route="/crash", status="500") == 1
    assert _value(samples, count, method="GET", route="unmatched", status="404") == 1
    total = sum(v for (name, _), v in samples.items() if name == count)
    assert total == len(ok) + 3  # every request timed exactly once
    assert _value(samples, "editgan_http_requests_in_flight") == 0
    assert _value(samples, "editgan_http_errors_total", code="not_found", status="404") == 1

    # Raw paths never become label values: the series count stays bounded by the routes.
    routes = {dict(labels).get("route") for _, labels in samples}
    assert routes <= {None, "/items/{item_id}", "/crash", "unmatched"}
    body = metrics.render()[0].decode()
    assert "/items/1" not in body and "/items/22" not in body and "/no/such" not in body


def test_collector_reads_queue_registries_workers_and_jobs(redis_client: redis.Redis) -> None:
    queue = Queue(QUEUE, connection=redis_client)
    jobs = [queue.enqueue("builtins.print", i) for i in range(4)]  # by dotted name; never executed here
    jobs[0].cancel()  # leaves the queue for the canceled registry
    worker = Worker([queue], connection=redis_client)
    worker.register_birth()
    record_job(redis_client, kind="invert", status="finished", seconds=0.3)
    record_job(redis_client, kind="invert", status="failed", seconds=12.0)

    other = Queue(f"{QUEUE}-other", connection=redis_client)  # a second model's queue: one job, no worker
    other.enqueue("builtins.print", 9)

    samples = _samples(ServiceMetrics(lambda: redis_client, lambda: [QUEUE, other.name]))
    assert _value(samples, "editgan_redis_up") == 1
    assert _value(samples, "editgan_queue_depth", queue=other.name) == 1
    assert _value(samples, "editgan_workers", queue=other.name) == 0
    assert _value(samples, "editgan_queue_depth", queue=QUEUE) == len(jobs) - 1 == queue.count
    assert _value(samples, "editgan_queue_registry_jobs", queue=QUEUE, registry="canceled") == 1
    for registry in ("started", "failed", "finished"):
        assert _value(samples, "editgan_queue_registry_jobs", queue=QUEUE, registry=registry) == 0
    assert _value(samples, "editgan_workers", queue=QUEUE) == 1

    stats = read_job_stats(redis_client)
    for kind, ks in stats.kinds.items():
        assert _value(samples, "editgan_job_duration_seconds_count", kind=kind) == ks.count
        assert _value(samples, "editgan_job_duration_seconds_sum", kind=kind) == ks.sum
        for bound, count in ks.buckets:
            le = "+Inf" if bound == float("inf") else repr(bound)
            assert _value(samples, "editgan_job_duration_seconds_bucket", kind=kind, le=le) == count
        for status, count in ks.statuses.items():
            assert _value(samples, "editgan_jobs_total", kind=kind, status=status) == count
    assert _value(samples, "editgan_jobs_total", kind="invert", status="failed") == 1


def test_scrape_with_redis_down_reports_it_and_does_not_raise() -> None:
    down = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5, socket_timeout=0.5)
    metrics = ServiceMetrics(lambda: down, lambda: [QUEUE])
    start = time.perf_counter()
    samples = _samples(metrics)
    assert time.perf_counter() - start < 5
    assert _value(samples, "editgan_redis_up") == 0
    assert not [name for name, _ in samples if name.startswith(("editgan_queue", "editgan_workers", "editgan_job"))]
    # The process-local HTTP instruments are still exported.
    assert _value(samples, "editgan_http_requests_in_flight") == 0


def test_two_instances_in_one_process_do_not_collide(redis_client: redis.Redis) -> None:
    first, second = (
        ServiceMetrics(lambda: redis_client, lambda: [QUEUE]),
        ServiceMetrics(lambda: redis_client, lambda: [QUEUE]),
    )
    record_error(first, "invalid_input", 422)
    assert _value(_samples(first), "editgan_http_errors_total", code="invalid_input", status="422") == 1
    assert ("editgan_http_errors_total", frozenset({("code", "invalid_input"), ("status", "422")})) not in _samples(
        second
    )


def test_device_memory_is_exported_per_model_device_and_only_for_gpus(redis_client: redis.Redis) -> None:
    # No GPU here: the allocator's figures come from a stand-in that knows only cuda:0 and cuda:1.
    figures = {
        "cuda:0": {"allocated": 1, "reserved": 2, "peak": 3},
        "cuda:1": {"allocated": 4, "reserved": 5, "peak": 6},
    }
    devices = [torch.device("cuda:1"), torch.device("cpu"), torch.device("cuda:0"), torch.device("cuda:0")]
    collector = DeviceMemoryCollector(lambda: devices, lambda d: figures.get(str(d)))
    (family,) = collector.collect()
    assert [(s.labels["device"], s.labels["kind"], s.value) for s in family.samples] == [
        ("cuda:0", "allocated", 1),
        ("cuda:0", "reserved", 2),
        ("cuda:0", "peak", 3),
        ("cuda:1", "allocated", 4),
        ("cuda:1", "reserved", 5),
        ("cuda:1", "peak", 6),
    ]
    # The real allocator reader on the CPU: nothing to export, so no empty family either.
    assert list(DeviceMemoryCollector(lambda: [torch.device("cpu")]).collect()) == []
    metrics = ServiceMetrics(lambda: redis_client, lambda: [QUEUE], devices=lambda: [torch.device("cpu")])
    samples = _samples(metrics)
    assert not [name for name, _ in samples if name.startswith("editgan_device_memory")]
    assert _value(samples, "process_resident_memory_bytes") > 0
