"""Section `jobs`: the asynchronous side.

- Engine, in this process: inversion, optimisation edit and refinement with the model's default steps
  (`--quick`: at most 4), time per update (median) and in total.
- Service: the same three as jobs through a real gateway and worker: queue overhead (rq's `enqueued_at`
  to `started_at`), run time (`started_at` to `ended_at`) against the engine time the job reports.
- Worker cold start: a job is queued before the worker process exists; then process start -> registered
  on the queue (models loaded) -> job started -> result.
- A job's end as its client sees it: the delay after rq's `ended_at` when following by long polls
  (`GET /jobs/{id}?wait=`) against polls every 0.25 s.
- Peak resident memory of the gateway and worker processes (the kernel's high-water mark) and, with the
  worker on a GPU, the most GPU memory a job held (its result's `peak_device_memory_gib`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import torch
from redis import Redis
from rq.job import Job, JobStatus

from bench.context import Context
from bench.inputs import EditInput, canvas, default_steps, edit_input, npy, png
from bench.live import Process, Service
from bench.results import SectionResult
from bench.timing import StepClock, gib, ratio, summary_ms, timed
from engine import Bundle, invert, optimize_edit, refine
from workers.queue import fetch

TERMINAL = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
POLL = 0.01  # seconds between status reads
POLL_INTERVAL = 0.25  # the web editor's pace before long polls


def engine_timings(ctx: Context, bundle: Bundle, inputs: EditInput, steps: dict[str, int]) -> dict[str, Any]:
    """Each mode once in this process: ms per update (median) and the whole call in s."""
    perceptual = ctx.perceptual(bundle)
    out: dict[str, Any] = {}

    def measure(mode: str, call: Callable[[StepClock], Any]) -> Any:
        clock = StepClock()
        result, seconds = timed(lambda: call(clock))
        out[mode] = {"steps": steps[mode], "ms_per_step": round(clock.per_step * 1000, 2), "total_s": round(seconds, 3)}
        return result

    image = canvas(bundle, inputs.photo)
    mask = torch.from_numpy(inputs.mask.astype("int64"))
    measure(
        "invert", lambda c: invert(bundle, image, perceptual=perceptual, params=_steps(steps, "invert"), progress=c)
    )
    edit = measure(
        "optimize",
        lambda c: optimize_edit(
            bundle, inputs.w, mask, inputs.region, perceptual=perceptual, params=_steps(steps, "optimize"), progress=c
        ),
    )
    measure(
        "refine",
        lambda c: refine(bundle, inputs.w, [(edit.vector, 1.0)], steps["refine"], perceptual=perceptual, progress=c),
    )
    return out


def _steps(steps: dict[str, int], mode: str) -> dict[str, int]:
    return {"steps": steps[mode]}


def wait_job(redis: Redis, job_id: str, timeout: float = 3600) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = fetch(redis, job_id)
        if job.get_status(refresh=False) in TERMINAL:
            if job.get_status(refresh=False) != JobStatus.FINISHED:
                raise RuntimeError(f"job {job_id} ended {job.get_status(refresh=False)}: {job.meta.get('error')}")
            return job
        time.sleep(POLL)
    raise TimeoutError(f"job {job_id} not done after {timeout} s")


class Submitter:
    """The three job kinds through the HTTP API, on the bench's inputs."""

    def __init__(self, http: httpx.Client, inputs: EditInput, steps: dict[str, int]) -> None:
        self.http, self.inputs, self.steps = http, inputs, steps
        response = http.post("/latents", files={"file": ("w.npy", npy(inputs.w[0]), "application/octet-stream")})
        response.raise_for_status()
        self.latent_id: str = response.json()["latent_id"]
        self.edit_id: str | None = None

    def invert(self, steps: int | None = None) -> str:
        files = {"image": ("photo.png", png(self.inputs.photo), "image/png")}
        return self._job(self.http.post("/invert", files=files, data={"steps": str(steps or self.steps["invert"])}))

    def optimize(self) -> str:
        data = {"latent_id": self.latent_id, "steps": str(self.steps["optimize"])}
        if self.inputs.region is not None:
            data["region"] = self.inputs.region
        files = {"mask": ("mask.png", png(self.inputs.mask), "image/png")}
        return self._job(self.http.post("/edit/optimize", data=data, files=files))

    def refine(self) -> str:
        assert self.edit_id is not None, "refine after an optimisation edit (its vector is applied)"
        body = {
            "latent_id": self.latent_id,
            "vectors": [{"vector": self.edit_id, "scale": 1.0}],
            "refine_steps": self.steps["refine"],
        }
        return self._job(self.http.post("/edit/vector", json=body))

    def _job(self, response: httpx.Response) -> str:
        if response.status_code != 202:
            raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")
        job_id: str = response.json()["job_id"]
        return job_id

    def result(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.http.get(f"/jobs/{job_id}").json()["result"]
        if "vector" in result:
            self.edit_id = result["vector"]["edit_id"]
        return result


def _at(job: Job, field: str) -> float:
    """A job timestamp set by rq (`enqueued_at`, `started_at`, `ended_at`; aware UTC) as epoch seconds."""
    stamp = getattr(job, field)
    if stamp is None:
        raise RuntimeError(f"job {job.id} has no {field}")
    return float(stamp.timestamp())


def cold_start(service: Service, submit: Submitter) -> tuple[dict[str, Any], Process]:
    """Queue a one-step inversion, then start the worker: seconds to models loaded, job start, result."""
    first = submit.invert(steps=1)
    wall0 = time.time()
    worker = service.worker()
    while (registered := service.registered(worker)) is None:
        time.sleep(POLL)
    job = wait_job(service.redis, first)
    assert registered.birth_date is not None
    return {
        # rq registers the worker once its models are in memory: its birth is "loaded"
        "to_models_loaded_s": round(registered.birth_date.timestamp() - wall0, 3),
        "to_first_job_start_s": round(_at(job, "started_at") - wall0, 3),
        "to_first_result_s": round(_at(job, "ended_at") - wall0, 3),
        "first_job": "inversion, 1 step",
    }, worker


def through_service(
    ctx: Context, service: Service, submit: Submitter, steps: dict[str, int], reps: int
) -> tuple[list[float], dict[str, Any]]:
    """Each kind `reps` times, one after the other: queue overheads (s) and run times per kind."""
    overhead: list[float] = []
    times: dict[str, Any] = {}
    for kind in ("invert", "optimize", "refine"):
        ctx.log(f"jobs: {reps} x {kind} through the service")
        runs, engine_s, gpu_gib = [], [], []
        for _ in range(reps):
            job = wait_job(service.redis, getattr(submit, kind)())
            overhead.append(_at(job, "started_at") - _at(job, "enqueued_at"))
            runs.append(_at(job, "ended_at") - _at(job, "started_at"))
            metrics = submit.result(job.id)["metrics"]
            engine_s.append(float(metrics["seconds"]))
            if metrics.get("peak_device_memory_gib") is not None:  # a worker on a GPU
                gpu_gib.append(float(metrics["peak_device_memory_gib"]))
        run_ms, eng_ms = summary_ms(runs), summary_ms(engine_s)
        times[kind] = {
            "steps": steps[kind],
            "job_run": run_ms,
            "engine_reported": eng_ms,
            "job_run_over_engine_p50": ratio(run_ms["p50_ms"], eng_ms["p50_ms"]),
            "peak_gpu_gib": max(gpu_gib, default=None),  # the worker's, for one job of this kind
        }
    return overhead, times


def follow(http: httpx.Client, job_id: str, long_poll: bool) -> float:
    """Follow a job through `GET /jobs/{id}` as a client does, by long polls or by polls every
    `POLL_INTERVAL`; the wall-clock time at which the client saw it end."""
    while True:
        params = {"wait": 25} if long_poll else None
        if JobStatus(http.get(f"/jobs/{job_id}", params=params).json()["status"]) in TERMINAL:
            return time.time()
        if not long_poll:
            time.sleep(POLL_INTERVAL)


def notification(service: Service, submit: Submitter, reps: int) -> dict[str, Any]:
    """How long after a refinement job ended its client saw it: long polls against polls every
    `POLL_INTERVAL` (the web editor's former pace), alternating, p50/p95 ms of each."""
    delays: dict[str, list[float]] = {"long_poll": [], "polling": []}
    for rep in range(reps):
        for long_poll in (True, False) if rep % 2 == 0 else (False, True):
            job_id = submit.refine()
            seen = follow(submit.http, job_id, long_poll)
            ended = _at(fetch(service.redis, job_id), "ended_at")
            delays["long_poll" if long_poll else "polling"].append(max(0.0, seen - ended))
    return {k: summary_ms(v) for k, v in delays.items()} | {"poll_interval_s": POLL_INTERVAL}


def run(ctx: Context) -> SectionResult:
    bundle = ctx.bundle()
    steps = default_steps(bundle, ctx.quick)
    inputs = edit_input(bundle)
    ctx.log(f"jobs: engine timings in process, steps {steps}")
    engine = engine_timings(ctx, bundle, inputs, steps)

    with Service(ctx.workdir / "jobs", ctx.service_env(), ctx.redis_url) as service:
        gateway = service.gateway()
        with httpx.Client(base_url=gateway.wait(), timeout=120) as http:
            submit = Submitter(http, inputs, steps)
            ctx.log("jobs: worker cold start (a job waits in the queue before the worker exists)")
            cold, worker = cold_start(service, submit)
            overhead, service_times = through_service(ctx, service, submit, steps, 2 if ctx.quick else 5)
            ctx.log("jobs: a job's end as its client sees it, long polls against polls")
            seen = notification(service, submit, 2 if ctx.quick else 6)
            memory = {"gateway_gib": gib(gateway.process.peak_rss()), "worker_gib": gib(worker.peak_rss())}
    gpu = [t["peak_gpu_gib"] for t in service_times.values() if t["peak_gpu_gib"] is not None]
    memory["worker_gpu_gib"] = max(gpu, default=None)

    queue = summary_ms(overhead)
    data = {
        "steps": steps,
        "engine": engine,
        "queue_overhead": queue,
        "service": service_times,
        "worker_cold_start": cold,
        "peak_memory": memory,
        "end_seen_after": seen,
    }
    per_step = ", ".join(f"{k} {engine[k]['ms_per_step']:.0f}" for k in ("invert", "optimize", "refine"))
    cell = (
        f"queue p50 {queue['p50_ms']:.1f} ms; ms/step {per_step}; cold start {cold['to_first_result_s']:.1f} s; "
        f"end seen after p50 {seen['long_poll']['p50_ms']:.0f} ms (long poll) / {seen['polling']['p50_ms']:.0f} ms "
        f"(polls every {POLL_INTERVAL} s); "
        f"RSS gateway {memory['gateway_gib']} / worker {memory['worker_gib']} GiB"
        + (f"; worker GPU {memory['worker_gpu_gib']} GiB" if memory["worker_gpu_gib"] is not None else "")
    )
    return SectionResult(data, {"jobs": cell})
