"""The FastAPI gateway: `create_app(settings)` wires settings, Redis, models, routers and handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import torch
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from starlette.concurrency import run_in_threadpool

from engine import Bundle, EngineError
from engine.graphs import GraphedRenderer
from schemas.errors import ErrorCode
from schemas.settings import Settings
from service import request_id, server_timing
from service.auth import Authenticator, parse_keys
from service.batching import render_batcher
from service.deps import authenticate
from service.errors import install_error_handlers
from service.job_events import JobEvents
from service.limits import BodyLimitMiddleware
from service.metrics import MetricsMiddleware, ServiceMetrics, record_error
from service.ratelimit import RateLimiter
from service.request_id import RequestIdMiddleware
from service.routes import editor, edits, health, jobs, latents, models, vectors
from service.state import Services, preview_members
from workers.models import compile_models, load_models, resolve_device, warn_cuda_graphs
from workers.queue import job_queue, sweep_lost_jobs
from workers.registry import Registry
from workers.store import LatentCache, Store

log = logging.getLogger("editgan.gateway")
SWEEP_SECONDS = 5.0  # how often started jobs are checked for a lost worker


def _operation_id(route: APIRoute) -> str:
    return route.name  # function names are unique: clean names for generated clients


async def _sweep_forever(redis: Redis, queue_names: list[str], heartbeat_ttl: float) -> None:
    """Sweep lost jobs every few seconds, except for one heartbeat TTL after Redis was unreachable: while it
    was down no worker could refresh its jobs' heartbeats, so every running job would look lost (and be run
    again, or failed, while it still runs)."""
    resume_at = 0.0
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        try:
            if time.monotonic() < resume_at:
                await run_in_threadpool(redis.ping)  # still reachable: the grace runs on
            else:
                for name in queue_names:
                    await run_in_threadpool(sweep_lost_jobs, redis, name)
        except Exception:  # Redis may be restarting: try again next round
            resume_at = time.monotonic() + SWEEP_SECONDS + heartbeat_ttl
            log.warning("sweeping lost jobs failed; sweeps resume one heartbeat TTL after Redis is back", exc_info=True)


def _graphed_renderers(bundles: dict[str, Bundle], settings: Settings) -> dict[str, GraphedRenderer]:
    """EDITGAN_CUDA_GRAPHS: each model on a CUDA device renders by replaying graphs, captured now for every
    batch size up to EDITGAN_MAX_BATCH, the whole ensemble and the previews', with and without the
    uncertainty map, so that no request waits for a capture; models on a CPU render eagerly (warned)."""
    if not settings.editgan_cuda_graphs:
        return {}
    warn_cuda_graphs(bundles, True)
    renderers = {}
    for name, bundle in bundles.items():
        if bundle.device.type == "cuda":
            start = time.perf_counter()
            members = [None, preview_members(bundle, settings.editgan_preview_members)]
            renderers[name] = GraphedRenderer(bundle, settings.editgan_max_batch, members)
            renderers[name].capture_all()
            count, seconds = len(renderers[name].keys), time.perf_counter() - start
            log.info("model %s: %d renders captured as CUDA graphs in %.1f s", name, count, seconds)
    return renderers


def create_app(settings: Settings, *, bundles: dict[str, Bundle] | None = None) -> FastAPI:
    """The gateway. `bundles` lets tests pass models already loaded; otherwise EDITGAN_MODELS_DIR is read."""
    if settings.redis_url is None:
        raise EngineError("the gateway needs REDIS_URL (`editgan up` starts an embedded Redis and sets it)")
    redis_url = settings.redis_url
    keys = parse_keys(settings.editgan_api_keys)  # a missing key file or a short key stops start-up here

    def connect() -> Redis:
        return Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30)

    def connect_async() -> AsyncRedis:  # the real-time route's client, on the event loop
        # One immediate retry on a fresh connection: after a Redis restart the pool's connections are dead, and
        # the first request on each would answer 503. Its commands (a latent read, a result written under new
        # ids) are safe to repeat.
        return AsyncRedis.from_url(
            redis_url,
            socket_timeout=5,
            socket_connect_timeout=2,
            health_check_interval=30,
            retry=AsyncRetry(NoBackoff(), 1),
        )

    def connect_listener() -> AsyncRedis:
        # The job announcements' subscriber idles for long: no read timeout, and over TCP keepalive probes to
        # notice a peer gone silently. A unix socket (the embedded Redis) takes neither option.
        keepalive = {} if redis_url.startswith("unix:") else {"socket_keepalive": True}
        return AsyncRedis.from_url(redis_url, socket_connect_timeout=2, client_name="editgan-job-events", **keepalive)

    def model_devices() -> list[torch.device]:  # for /metrics; empty until the lifespan has loaded them
        services = getattr(app.state, "services", None)
        return [bundle.device for bundle in services.bundles.values()] if services else []

    def queue_names() -> list[str]:  # for /metrics; empty until the lifespan has loaded the models
        services = getattr(app.state, "services", None)
        return [queue.name for queue in services.queues.values()] if services else []

    def job_events() -> JobEvents | None:  # for /metrics
        services = getattr(app.state, "services", None)
        return services.job_events if services else None

    metrics = ServiceMetrics(connect, queue_names, devices=model_devices, job_events=job_events)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.editgan_threads:
            torch.set_num_threads(settings.editgan_threads)
        # Every heavy torch call of the gateway (loading, rendering) runs on this one thread: with OpenMP
        # each thread that opens parallel regions gets a team of its own, and once teams outnumber the
        # cores libgomp stops spinning between regions; a render then took 57 ms instead of 35 (2 cores).
        engine = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        if settings.editgan_threads:
            await asyncio.wrap_future(engine.submit(torch.set_num_threads, settings.editgan_threads))
        loaded = bundles
        if loaded is None:
            device = resolve_device(settings.editgan_gateway_device)
            loaded = await asyncio.wrap_future(engine.submit(load_models, settings.editgan_models_dir, device))
        if settings.editgan_compile:  # before the first request: each would otherwise wait for a compilation
            await asyncio.wrap_future(engine.submit(compile_models, loaded, gradients=False))
        renderers = await asyncio.wrap_future(engine.submit(_graphed_renderers, loaded, settings))
        redis = connect()
        aredis = connect_async()
        latent_cache = LatentCache(settings.editgan_latent_cache) if settings.editgan_latent_cache else None
        job_events = JobEvents(connect_listener)
        queues = {name: job_queue(redis, settings, name) for name in loaded}
        batchers = {
            name: render_batcher(
                bundle,
                engine,
                max_batch=settings.editgan_max_batch,
                wait_seconds=settings.editgan_batch_wait_ms / 1000,
                on_batch=metrics.vector_batch_size.labels(model=name).observe,
                renderer=renderers.get(name),
            )
            for name, bundle in loaded.items()
        }
        app.state.services = Services(
            settings=settings,
            redis=redis,
            store=Store(redis, settings.editgan_result_ttl, aredis=aredis, latent_cache=latent_cache),
            registry=Registry(redis),
            queues=queues,
            bundles=loaded,
            batchers=batchers,
            engine=engine,
            job_events=job_events,
        )
        names = [queue.name for queue in queues.values()]
        sweeper = asyncio.create_task(_sweep_forever(redis, names, settings.editgan_heartbeat_ttl))
        listener = asyncio.create_task(job_events.run())
        log.info("gateway ready: models %s", sorted(loaded))
        try:
            yield
        finally:
            sweeper.cancel()
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            for batcher in batchers.values():
                batcher.close()
            engine.shutdown(wait=True)
            redis.close()
            await aredis.aclose()

    app = FastAPI(
        title="EditGAN service",
        version="0.1.0",
        summary="Semantic image editing through segmentation masks (EditGAN, NeurIPS 2021).",
        description="Embed an image (`POST /invert`), edit its segmentation (`POST /edit/optimize`), "
        "re-apply the resulting editing vectors in real time (`POST /edit/vector`). "
        "Long operations are jobs: poll `GET /jobs/{id}`. Errors are `{code, message}`.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        dependencies=[Depends(authenticate)],  # every route; /static and /docs hold no data
    )
    app.state.metrics = metrics
    app.state.auth = Authenticator(keys, public_reads=settings.editgan_public_reads)
    app.state.rate_limiter = RateLimiter(settings.editgan_rate_limit) if settings.editgan_rate_limit else None
    install_error_handlers(app, on_error=lambda code, status: record_error(metrics, code, status))
    for router in (edits.router, jobs.router, models.router, vectors.router, latents.router, health.router):
        app.include_router(router)
    app.include_router(editor.router)
    app.mount("/static", StaticFiles(directory=editor.STATIC_DIR), name="static")  # the web editor's files
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.editgan_max_upload_bytes + 64 * 1024,
        on_refuse=lambda: record_error(metrics, ErrorCode.payload_too_large, 413),
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    origins = [o.strip() for o in settings.editgan_cors_origins.split(",") if o.strip()]
    if origins:  # closed by default: browsers refuse cross-origin calls unless an origin is named
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "HEAD", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key"],
            expose_headers=[
                *("Location", "Retry-After", "Idempotent-Replayed", "X-Model", "Content-Disposition"),
                request_id.HEADER,
                server_timing.HEADER,  # a page on another origin reads a real-time edit's phases too
            ],
            allow_credentials=False,  # keys travel in headers, never cookies
        )
    app.add_middleware(RequestIdMiddleware)  # outermost of these: every answer above carries the id
    return app
