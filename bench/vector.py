"""Section `vector`: synchronous vector edits.

- The bare engine forward (`apply_vectors`: latent arithmetic, generator, segmentation), in this process,
  against `POST /edit/vector` end to end through a real gateway (HTTP, Redis reads and writes, PNGs),
  one request at a time: p50/p95/p99 and the ratio of the p50s. Both are measured in alternating blocks.
  Beside it the same requests against their own engine time inside the gateway (`metrics.seconds`), paired
  per request: immune to the two processes running torch at different speeds. In the same blocks, a
  `GET /healthz` (the HTTP stack doing no work) and a Redis PING, back to back and after 10 ms idle: the
  fixed parts of that overhead. Each edit's `Server-Timing` header splits it into the gateway's phases and
  what lies outside the route.
- Throughput and latency at 1, 4 and 16 concurrent clients (threads, one keep-alive connection each).
  Every request goes through `_Connection`, a lean standard-library client, so that the client's own
  Python costs the shared cores little.
- Micro-batching on (the default settings) against off (`EDITGAN_MAX_BATCH=1`): two gateways on the same
  Redis, measured in alternating blocks: the 16-client throughput gain and the single-client p50 change;
  beside it the engine's own time per edit in batches of 1, 4 and 16, the most batching can gain.
- On a GPU, EDITGAN_CUDA_GRAPHS: a third gateway (batching on, renders replayed as CUDA graphs) against the
  first, in alternating blocks of their own after the rounds above: single-client p50 and 16-client
  throughput. A gateway that fails there is reported as an error, and the section's other figures stand.
- Open-loop latency, batching on and off: requests at Poisson times, at half and at nine tenths of the
  throughput the gateway without batching reached at 16 clients. Each latency counts from the request's
  scheduled time, so a late server cannot slow the offered load down and hide its queue (closed-loop
  clients, as above, wait for each answer before they ask again).
- Peak memory of each gateway: resident (the kernel's high-water mark) and, with its models on a GPU, GPU
  memory (`editgan_device_memory_bytes` in its /metrics).
"""

from __future__ import annotations

import http.client
import json
import math
import queue
import random
import re
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx
import torch
from torch import Tensor

from bench.context import Context
from bench.inputs import latent, npy
from bench.live import Gateway, Service
from bench.results import SectionResult
from bench.timing import gib, ratio, repeat, summary_ms
from engine import Bundle, apply_vectors, render
from schemas.settings import Settings
from service import server_timing
from service.state import preview_members
from workers.vectors import bundle_vector

CONCURRENCY = (1, 4, 16)
# One-at-a-time measurements alternate every BLOCK calls (engine, HTTP, previews, batching off and on): this
# VM switches between two speeds for seconds at a time, and blocks of a whole round (100 calls) put the
# two sides of one ratio in different speeds (HTTP p50 27.3 and 18.9 ms against one gateway in one run).
BLOCK = 10
OUTSIDE = "outside"  # an edit's duration at the client less the route's (Server-Timing `route`)
GRAPHS = "graphs"  # on a GPU, the gateway with EDITGAN_CUDA_GRAPHS
IDLE_SECONDS = 0.01  # about one engine pass: how long Redis sits idle between an edit's two round trips
OPEN_LOOP_LOADS = (0.5, 0.9)  # offered rates, as fractions of the batching-off gateway's 16-client throughput
OPEN_LOOP_CONNECTIONS = 32  # the open-loop client's connections: requests beyond them queue in the client


class _Connection:
    """One keep-alive HTTP/1.1 connection posting JSON, on the standard library's client.

    The measuring client shares the machine's two cores with the gateway, so it must cost little, as `wrk`
    or `hey` would: httpx took 1.1-1.5 ms of Python per request here (a `/healthz` round trip 2.4 ms against
    1.4 ms on this client), which a latency figure of the service should not include.
    """

    def __init__(self, url: str, timeout: float = 120.0) -> None:
        parts = urlsplit(url)
        self.http = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
        self.http.connect()
        self.http.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        return self._send("POST", path, body, {"Content-Type": "application/json"})

    def get(self, path: str) -> tuple[int, bytes]:
        return self._send("GET", path, None, {})

    def _send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        self.http.request(method, path, body=body, headers=headers)
        response = self.http.getresponse()
        self.headers = response.headers  # the last response's
        return response.status, response.read()

    def close(self) -> None:
        self.http.close()


def _post_ok(connection: _Connection, body: bytes) -> bytes:
    status, data = connection.post("/edit/vector", body)
    if status != 200:
        raise RuntimeError(f"POST /edit/vector answered {status}: {data[:300]!r}")
    return data


def _sequential(
    url: str,
    body: dict[str, Any],
    n: int,
    inside: list[float] | None = None,
    phases: dict[str, list[float]] | None = None,
) -> list[float]:
    """`n` requests one at a time: their durations; each response's own engine time goes to `inside`, its
    Server-Timing phases (ms) to `phases`."""
    return _one_at_a_time(url, body, [body] * n, inside, phases)


def _one_at_a_time(
    url: str,
    warm_up: dict[str, Any],
    bodies: list[dict[str, Any]],
    inside: list[float] | None = None,
    phases: dict[str, list[float]] | None = None,
) -> list[float]:
    """Each body posted once, one at a time, after two posts of `warm_up` (the connection, first-call
    allocations): their durations; each response's own engine time goes to `inside`, its Server-Timing
    phases (ms) to `phases`, with `outside` the rest of its duration (HTTP, framework, wake-ups). With
    fresh latents in `bodies` it times what the gateway's latent cache cannot serve (a latent read from
    Redis), against `_sequential`'s repeated edits of one latent, a slider's pattern, with the same warm-up."""
    connection = _Connection(url)
    try:
        for _ in range(2):
            _post_ok(connection, json.dumps(warm_up).encode())
        out = []
        for body in bodies:
            payload = json.dumps(body).encode()
            start = time.perf_counter()
            data = _post_ok(connection, payload)
            out.append(time.perf_counter() - start)
            if inside is not None:
                inside.append(float(json.loads(data)["metrics"]["seconds"]))
            timings = server_timing.parse(connection.headers.get(server_timing.HEADER, ""))
            if phases is not None and server_timing.TOTAL in timings:  # none with EDITGAN_SERVER_TIMING off
                timings[OUTSIDE] = out[-1] * 1000 - timings[server_timing.TOTAL]
                for name, ms in timings.items():
                    phases.setdefault(name, []).append(ms)
        return out
    finally:
        connection.close()


def _after_idle(call: Callable[[], object], n: int) -> list[float]:
    """`n` timed calls, each after `IDLE_SECONDS` asleep: what a round trip costs when the other side has gone
    idle meanwhile, as Redis has by the time an edit's render is done (on a VM, waking an idle vCPU costs)."""
    out = []
    for _ in range(n):
        time.sleep(IDLE_SECONDS)
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def _floor(url: str, n: int) -> list[float]:
    """`n` GET /healthz one at a time: a request through the whole HTTP stack (uvicorn, the middlewares,
    routing, authentication, a thread-pool hop) that does no work, the part of an edit's overhead that no
    route can avoid."""
    connection = _Connection(url)
    try:
        connection.get("/healthz")
        out = []
        for _ in range(n):
            start = time.perf_counter()
            status, _ = connection.get("/healthz")
            out.append(time.perf_counter() - start)
            if status != 200:
                raise RuntimeError(f"GET /healthz answered {status}")
        return out
    finally:
        connection.close()


def load(url: str, body: dict[str, Any], clients: int, seconds: float) -> dict[str, Any]:
    """`clients` closed-loop clients for `seconds`: requests/s and latency."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    ready = threading.Barrier(clients + 1)
    stop = threading.Event()

    payload = json.dumps(body).encode()

    def client(i: int) -> None:
        connection = _Connection(url)
        try:
            connection.post("/edit/vector", payload)  # warm-up: the connection
            ready.wait()
            while not stop.is_set():
                start = time.perf_counter()
                status, _ = connection.post("/edit/vector", payload)
                if status != 200:
                    errors[i] += 1
                    continue
                latencies[i].append(time.perf_counter() - start)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start  # includes the requests in flight at the stop: all are counted
    done = [x for per in latencies for x in per]
    return {
        "clients": clients,
        "requests": len(done),
        "errors": sum(errors),
        "seconds": round(elapsed, 3),
        "throughput_rps": round(len(done) / elapsed, 2),
        "latency": summary_ms(done),
    }


def open_loop(url: str, body: dict[str, Any], rate: float, seconds: float, seed: int = 0) -> tuple[list[float], int]:
    """Requests at Poisson times of mean `rate` per second for `seconds`, whether or not earlier ones were
    answered, the way a service sees independent users: (latencies, each from its request's scheduled time,
    so a request that waited for a free connection counts its wait; the number of failed requests)."""
    payload = json.dumps(body).encode()
    schedule: queue.SimpleQueue[float | None] = queue.SimpleQueue()
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client() -> None:
        connection = _Connection(url)
        try:
            while (due := schedule.get()) is not None:
                if (early := due - time.perf_counter()) > 0:
                    time.sleep(early)
                try:
                    status, _ = connection.post("/edit/vector", payload)
                except (OSError, http.client.HTTPException):  # counted, and the next request gets a new connection
                    status = 0
                    connection.close()
                    connection = _Connection(url)
                with lock:
                    if status == 200:
                        latencies.append(time.perf_counter() - due)
                    else:
                        errors[0] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(OPEN_LOOP_CONNECTIONS)]
    for t in threads:
        t.start()
    draw = random.Random(seed)
    due = time.perf_counter() + 0.05  # the connections are opening
    end = due + seconds
    while due < end:
        schedule.put(due)
        due += draw.expovariate(rate)
    for _ in threads:
        schedule.put(None)
    for t in threads:
        t.join()
    return latencies, errors[0]


def _batches(url: str, model: str) -> tuple[float, float]:
    """(requests, batches) counted so far by the gateway's batch-size histogram."""
    text = httpx.get(f"{url}/metrics", timeout=10).text

    def read(name: str) -> float:
        found = re.search(rf'^editgan_vector_batch_size_{name}\{{model="{re.escape(model)}"\}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    return read("sum"), read("count")


def _gpu_peak_gib(url: str) -> float | None:
    """The gateway's peak GPU memory since it started (its /metrics, all its models' devices); None on a CPU."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.findall(r'^editgan_device_memory_bytes\{device="[^"]*",kind="peak"\} (\S+)$', text, re.M)
    return gib(int(sum(float(v) for v in found))) if found else None


@dataclass
class Samples:
    """Everything the section measured, in seconds (or requests/s) per sample."""

    engine: list[float] = field(default_factory=list)  # apply_vectors, one edit
    per_edit: dict[int, list[float]] = field(default_factory=lambda: {b: [] for b in CONCURRENCY})  # batched
    engine_gain_rounds: list[float | None] = field(default_factory=list)  # per round: batch 1 / batch 16 per edit
    http: list[float] = field(default_factory=list)  # POST /edit/vector, one at a time, batching on
    # the same requests' engine time inside the gateway (vector arithmetic, render, arrays: `metrics.seconds`)
    http_engine: list[float] = field(default_factory=list)
    first_edit: list[float] = field(default_factory=list)  # the same, each the first edit of its latent
    preview_http: list[float] = field(default_factory=list)  # the same with `preview: true`
    preview_engine: list[float] = field(default_factory=list)  # render by the preview's members
    floor: list[float] = field(default_factory=list)  # GET /healthz, one at a time (`_floor`)
    redis: list[float] = field(default_factory=list)  # a Redis PING from this process
    redis_after_idle: list[float] = field(default_factory=list)  # the same, each after 10 ms asleep
    phases: dict[str, list[float]] = field(default_factory=dict)  # `http`'s Server-Timing phases, in ms
    single: dict[str, list[float]] = field(default_factory=lambda: {"on": [], "off": []})
    loaded_rps: dict[str, list[float]] = field(default_factory=lambda: {"on": [], "off": []})  # 16 clients
    preview_rps: dict[str, list[float]] = field(default_factory=lambda: {"on": [], "off": []})  # the same, previews
    batched: list[float] = field(default_factory=lambda: [0.0, 0.0])  # (requests, batches) at 16 clients, on
    # open loop, per load fraction and gateway: latencies of all repetitions (seconds), failed requests, and
    # the rate offered
    open_loop: dict[float, dict[str, list[float]]] = field(default_factory=dict)
    open_errors: dict[float, dict[str, int]] = field(default_factory=dict)
    open_rates: dict[float, float] = field(default_factory=dict)
    sweep: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, float | None] = field(default_factory=dict)
    # EDITGAN_CUDA_GRAPHS against batching on ("on"), one-at-a-time durations and 16-client throughputs
    graphs_single: dict[str, list[float]] = field(default_factory=dict)
    graphs_rps: dict[str, list[float]] = field(default_factory=dict)
    graphs_error: str | None = None


def measure(ctx: Context, bundle: Bundle, name: str) -> Samples:
    vector = bundle_vector(bundle, name)
    w = latent(bundle)
    rounds = 1 if ctx.quick else 3
    n = 15 if ctx.quick else 100  # requests per round, one at a time
    seconds = ctx.load_seconds or (1.5 if ctx.quick else 10.0)  # per throughput measurement
    out = Samples()
    with Service(ctx.workdir / "vector", ctx.service_env(), ctx.redis_url) as service:
        ctx.log("vector: starting two gateways (micro-batching on and off)")
        gateways = {"on": service.gateway("gateway-on"), "off": service.gateway("gateway-off", EDITGAN_MAX_BATCH="1")}
        if ctx.device.type == "cuda":  # started now, so that its captures are done before anything is timed
            gateways[GRAPHS] = service.gateway("gateway-graphs", EDITGAN_CUDA_GRAPHS="true")
        urls = {k: g.wait() for k, g in gateways.items() if k != GRAPHS}
        with httpx.Client(base_url=urls["on"], timeout=60) as client:
            response = client.post("/latents", files={"file": ("w.npy", npy(w[0]), "application/octet-stream")})
            response.raise_for_status()
        body = {"latent_id": response.json()["latent_id"], "vectors": [{"vector": name, "scale": 1.0}]}
        blocks = max(1, n // BLOCK)
        fresh = [body | {"latent_id": i} for i in _upload(urls["on"], w, rounds * blocks * BLOCK)]

        for r in range(rounds):
            ctx.log(f"vector: round {r + 1}/{rounds}: engine forward and HTTP, one request at a time")
            for b in range(blocks):  # what is compared alternates every BLOCK calls
                out.engine += repeat(lambda: apply_vectors(bundle, w, [(vector, 1.0)]), BLOCK)
                out.http += _sequential(urls["on"], body, BLOCK, out.http_engine, out.phases)
                out.first_edit += _one_at_a_time(urls["on"], body, fresh[(r * blocks + b) * BLOCK :][:BLOCK])
                out.floor += _floor(urls["on"], BLOCK)
                out.redis += repeat(service.redis.ping, BLOCK)
                out.redis_after_idle += _after_idle(service.redis.ping, BLOCK)
                out.preview_http += _sequential(urls["on"], body | {"preview": True}, BLOCK)
                out.preview_engine += repeat(lambda: render(bundle, w, members=_preview_count(bundle)), BLOCK)
                for key in ("off", "on"):
                    out.single[key] += _sequential(urls[key], body, BLOCK)
            per_edit: dict[int, float] = {}
            for size in CONCURRENCY:  # what one batched pass costs per edit: the ceiling of batching's gain
                times = repeat(partial(render, bundle, w.expand(size, -1, -1)), max(3, n // size), warmup=1)
                out.per_edit[size] += [t / size for t in times]
                per_edit[size] = statistics.median(times) / size
            out.engine_gain_rounds.append(ratio(per_edit[1], per_edit[16]))
            for key in ("off", "on"):
                ctx.log(f"vector: round {r + 1}/{rounds}: batching {key}, 16 clients")
                before = _batches(urls[key], bundle.spec.name)
                out.loaded_rps[key].append(load(urls[key], body, 16, seconds)["throughput_rps"])
                out.preview_rps[key].append(load(urls[key], body | {"preview": True}, 16, seconds)["throughput_rps"])
                if key == "on":
                    after = _batches(urls[key], bundle.spec.name)
                    out.batched = [out.batched[0] + after[0] - before[0], out.batched[1] + after[1] - before[1]]

        if GRAPHS in gateways:
            ctx.log("vector: CUDA graphs against eager renders, batching on")
            if (graphs_url := _graphs(out, gateways[GRAPHS], urls["on"], body, rounds, blocks, seconds)) is not None:
                urls[GRAPHS] = graphs_url  # for its memory figures below
        capacity = statistics.mean(out.loaded_rps["off"])
        for rep in range(2):
            for load_share in OPEN_LOOP_LOADS:
                rate = load_share * capacity
                ctx.log(f"vector: open loop at {rate:.0f} req/s ({load_share:.0%} of unbatched capacity), {rep + 1}/2")
                out.open_rates[load_share] = rate
                samples = out.open_loop.setdefault(load_share, {"on": [], "off": []})
                errors = out.open_errors.setdefault(load_share, {"on": 0, "off": 0})
                for key in ("off", "on") if rep == 0 else ("on", "off"):
                    latencies, failed = open_loop(urls[key], body, rate, seconds / 2, seed=rep)
                    samples[key] += latencies
                    errors[key] += failed
        ctx.log("vector: throughput at 1, 4 and 16 clients")
        out.sweep = [load(urls["on"], body, c, seconds) for c in CONCURRENCY]
        out.memory = {f"gateway_{k}_gib": gib(g.process.peak_rss()) for k, g in gateways.items() if k in urls}
        out.memory |= {f"gateway_{k}_gpu_gib": _gpu_peak_gib(urls[k]) for k in urls}
    return out


def _graphs(
    out: Samples, gateway: Gateway, on: str, body: dict[str, Any], rounds: int, blocks: int, seconds: float
) -> str | None:
    """The EDITGAN_CUDA_GRAPHS gateway against batching on, alternating -> its URL, or None when it failed: a
    first GPU run of it must not take the section's other figures with it, so whatever fails ends up in
    `graphs_error`."""
    try:
        urls = {"on": on, GRAPHS: gateway.wait()}
        for _ in range(rounds):
            for b in range(blocks):
                for key in ("on", GRAPHS) if b % 2 == 0 else (GRAPHS, "on"):
                    out.graphs_single.setdefault(key, []).extend(_sequential(urls[key], body, BLOCK))
            for key in ("on", GRAPHS):
                out.graphs_rps.setdefault(key, []).append(load(urls[key], body, 16, seconds)["throughput_rps"])
    except Exception as exc:  # a probe: the error, with the gateway's log tail when it exited
        out.graphs_error = repr(exc)[-1500:]
        return None
    return urls[GRAPHS]


def _upload(url: str, w: Tensor, count: int) -> list[str]:
    """`w` [1, L, S] stored `count` times through `POST /latents`: `count` new latent ids."""
    data, ids = npy(w[0]), []
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(count):
            response = client.post("/latents", files={"file": ("w.npy", data, "application/octet-stream")})
            response.raise_for_status()
            ids.append(response.json()["latent_id"])
    return ids


def _preview_count(bundle: Bundle) -> int:
    return preview_members(bundle, Settings().editgan_preview_members)


def preview_quality(bundle: Bundle, samples: int = 32) -> dict[str, float]:
    """How far a preview's labels are from the whole ensemble's, on truncated samples of the generator:
    the share of equal pixels and the mean over classes of the IoU between the two label maps."""
    psi = float(bundle.spec.defaults.get("sample", {}).get("truncation", 0.7))
    with torch.no_grad():
        w = bundle.generator.sample_w_plus(samples, seed=1, psi=psi)
        full = render(bundle, w).labels
        fast = render(bundle, w, members=_preview_count(bundle)).labels
    ious = [
        float(((full == c) & (fast == c)).sum() / union)
        for c in range(len(bundle.spec.classes))
        if (union := ((full == c) | (fast == c)).sum()) > 0
    ]
    agreement = float((full == fast).float().mean())
    return {"pixel_agreement": round(agreement, 4), "class_iou": round(statistics.mean(ious), 4)}


def run(ctx: Context) -> SectionResult:
    bundle = ctx.bundle()
    if not bundle.vectors:
        raise ValueError(f"model {bundle.spec.name} ships no editing vector to apply")
    name = sorted(bundle.vectors)[0]
    s = measure(ctx, bundle, name)

    engine, http = summary_ms(s.engine), summary_ms(s.http)
    single = {k: summary_ms(v) for k, v in s.single.items()}
    loaded = {k: statistics.mean(v) for k, v in s.loaded_rps.items()}
    ceiling = ratio(statistics.median(s.per_edit[1]), statistics.median(s.per_edit[16]))
    batching: dict[str, Any] = {
        "single_client": single,
        "throughput_16_clients_rps": {k: round(v, 2) for k, v in loaded.items()},
        "throughput_gain_16_clients": ratio(loaded["on"], loaded["off"]),
        # each round's on and off measured back to back: the spread says how much of a difference is this VM's drift
        "throughput_gain_per_round": [
            ratio(a, b) for a, b in zip(s.loaded_rps["on"], s.loaded_rps["off"], strict=True)
        ],
        "target_throughput_gain": 2.0,
        "mean_batch_16_clients": ratio(s.batched[0], s.batched[1], 2),
        # engine time per edit alone / in a batch of 16, in this process: what batching can gain at most
        "engine_gain_batch_16": ceiling,
        "engine_gain_per_round": s.engine_gain_rounds,
        "single_client_p50_change": _change(single["on"]["p50_ms"], single["off"]["p50_ms"]),
        "target_single_client_p50_change": 0.10,
        # slider drags: the segmentation is a smaller share of a preview, so batching's gain is larger
        "preview_throughput_16_clients_rps": {k: round(statistics.mean(v), 2) for k, v in s.preview_rps.items()},
        "preview_throughput_gain_16_clients": ratio(
            statistics.mean(s.preview_rps["on"]), statistics.mean(s.preview_rps["off"])
        ),
        # independent users (Poisson arrivals) at a share of the unbatched gateway's 16-client throughput
        "open_loop": [_open_loop_row(s, share) for share in OPEN_LOOP_LOADS],
    }
    if s.graphs_error is not None or s.graphs_rps:
        batching["cuda_graphs"] = _graphs_summary(s, loaded["off"])
    over = ratio(http["p50_ms"], engine["p50_ms"])
    # The same ratio from one process: this VM runs a process's torch code in one of two speeds (about 19 or
    # 29 ms for this forward), so the gateway's engine and the bench's may differ. Paired per request.
    paired = ratio(statistics.median(s.http), statistics.median(s.http_engine))
    overhead = statistics.median([h - e for h, e in zip(s.http, s.http_engine, strict=True)]) * 1000
    preview = summary_ms(s.preview_http)
    phases = {name: round(statistics.median(v), 3) for name, v in s.phases.items()}
    data = {
        "vector": f"{name}@0",
        "engine_forward": engine,
        "engine_batched_ms_per_edit": {str(b): summary_ms(t)["p50_ms"] for b, t in s.per_edit.items()},
        "http_end_to_end": http,
        # each request the first edit of its latent: read from Redis, not from the gateway's latent cache
        "http_first_edit_of_a_latent": summary_ms(s.first_edit),
        "http_over_engine_p50": over,
        "target_http_over_engine_p50": 1.2,
        "gateway_engine": summary_ms(s.http_engine),
        "http_over_gateway_engine_p50": paired,
        "http_overhead_ms_p50": round(overhead, 2),
        # what part of that overhead is fixed: the HTTP stack doing nothing, and one Redis round trip (an edit
        # makes two: the latent read and the result transaction)
        "http_floor_healthz": summary_ms(s.floor),
        "redis_round_trip": summary_ms(s.redis),
        "redis_round_trip_after_idle": summary_ms(s.redis_after_idle),
        # the gateway's own account of the one-at-a-time edits (Server-Timing), and the rest of each duration
        "gateway_phases_p50_ms": phases,
        "target_http_p50_ms": 20.0,
        "preview": {
            "members": _preview_count(bundle),
            "of": len(bundle.segmenter.classifiers()),
            "engine_forward": summary_ms(s.preview_engine),
            "http_end_to_end": preview,
            "labels_vs_whole_ensemble": preview_quality(bundle),
        },
        "concurrency": s.sweep,
        "batching": batching,
        "peak_memory": s.memory,
    }
    rps = "/".join(f"{x['throughput_rps']:.0f}" for x in s.sweep)
    busy = batching["open_loop"][-1]
    cells = {
        "vector": f"{over}x (in the gateway: {paired}x, +{overhead:.1f} ms{_where(phases)}; "
        f"HTTP p50 {http['p50_ms']:.1f} (a latent's "
        f"first edit {summary_ms(s.first_edit)['p50_ms']:.1f}), "
        f"p99 {http['p99_ms']:.1f} ms; preview p50 "
        f"{preview['p50_ms']:.1f} ms); {rps} req/s at 1/4/16",
        "batching": f"{batching['throughput_gain_16_clients']}x at 16 clients"
        f"{_spread(batching['throughput_gain_per_round'])} (engine alone, batch 16 vs 1: {ceiling}x"
        f"{_spread(s.engine_gain_rounds)}; previews {batching['preview_throughput_gain_16_clients']}x); 1-client p50 "
        f"{_percent(batching['single_client_p50_change'])}; open loop at {busy['rate_rps']:.0f} req/s: p99 "
        f"{_p99(busy, 'on')} ms on, {_p99(busy, 'off')} ms off",
    }
    if "cuda_graphs" in batching:
        cells["batching"] += _graphs_cell(batching["cuda_graphs"])
    return SectionResult(data, cells)


def _graphs_summary(s: Samples, off_rps: float) -> dict[str, Any]:
    """EDITGAN_CUDA_GRAPHS against the same gateway without it (batching on in both), or the error."""
    if s.graphs_error is not None:
        return {"error": s.graphs_error}
    single = {k: summary_ms(v) for k, v in s.graphs_single.items()}
    rps = {k: statistics.mean(v) for k, v in s.graphs_rps.items()}
    return {
        "single_client": single,
        "throughput_16_clients_rps": {k: round(v, 2) for k, v in rps.items()},
        "throughput_gain_16_clients": ratio(rps[GRAPHS], rps["on"]),
        "single_client_p50_change": _change(single[GRAPHS]["p50_ms"], single["on"]["p50_ms"]),
        "batching_gain_16_clients": ratio(rps[GRAPHS], off_rps),  # graphs and batching against neither
    }


def _graphs_cell(graphs: dict[str, Any]) -> str:
    if "error" in graphs:
        return "; CUDA graphs: failed (see the JSON)"
    p50 = graphs["single_client"][GRAPHS]["p50_ms"]
    return (
        f"; CUDA graphs: 16 clients {graphs['throughput_gain_16_clients']}x, 1-client p50 "
        f"{_percent(graphs['single_client_p50_change'])} ({p50:.1f} ms)"
    )


def _where(phases: dict[str, float]) -> str:
    """The largest parts of the overhead, from the Server-Timing phases (empty if the gateway sent none)."""
    if OUTSIDE not in phases:
        return ""
    return f" (storing {phases.get('store', math.nan):.1f}, outside the route {phases[OUTSIDE]:.1f})"


def _change(new: float, old: float) -> float | None:
    """new / old - 1: +0.05 is 5 % slower."""
    r = ratio(new, old, 4)
    return None if r is None else round(r - 1, 4)


def _open_loop_row(s: Samples, share: float) -> dict[str, Any]:
    latency = {k: summary_ms(v) for k, v in s.open_loop[share].items()}
    p99 = {k: float(v.get("p99_ms", math.nan)) for k, v in latency.items()}
    return {
        "load": share,
        "rate_rps": round(s.open_rates[share], 2),
        "errors": s.open_errors[share],
        "latency": latency,
        "p99_on_over_off": ratio(p99["on"], p99["off"]),
    }


def _spread(values: list[float | None]) -> str:
    """', rounds 1.85-2.02' from per-round figures; nothing for fewer than two."""
    known = [v for v in values if v is not None]
    return f", rounds {min(known)}-{max(known)}" if len(known) > 1 else ""


def _p99(open_loop: dict[str, Any], key: str) -> str:
    p99 = open_loop["latency"][key].get("p99_ms")
    return "-" if p99 is None else f"{p99:.0f}"


def _percent(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.1f} %"
