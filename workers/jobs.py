"""The job functions rq runs: JSON payload in, JSON result out, heavy data by id through the stores.

Each adapts the engine's `progress` callback to `job.meta` and its `should_stop` to the job's stop key
and the worker's shutdown flag. Engine errors are recorded as `{code, message}` in `job.meta["error"]`.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image
from rq import get_current_job
from rq.job import Job

from engine import Bundle, CancelledError, EngineError, invert, optimize_edit, refine
from engine.memory import peak_gib, reset_peak
from engine.timing import elapsed
from schemas.edits import (
    EditVectorInfo,
    InvertResult,
    Metrics,
    OptimizeEditResult,
    Output,
    VectorEditResult,
    VectorRef,
    VectorTerm,
)
from schemas.jobs import JobProgress
from workers.queue import announce, stop_key
from workers.registry import ReadOnlyVectorError, VectorNotFoundError
from workers.results import publish, rendering_arrays
from workers.runtime import Runtime, current
from workers.store import ForbiddenError, NotFoundError
from workers.vectors import ModelMismatchError, check_new_name, resolve, save_vector

PROGRESS_INTERVAL = 0.25  # seconds between job.meta writes; the final step is always written


class ShutdownRequestedError(CancelledError):
    """The worker got SIGTERM: the job stops at a step boundary and goes back to the queue."""

    code = "shutdown"


class Reporter:
    """Progress into job.meta (throttled); stop requests from the job's stop key and SIGTERM."""

    def __init__(self, job: Job, runtime: Runtime) -> None:
        self.job, self.runtime = job, runtime
        self.progress_state = JobProgress(stage="loading")
        self._last_write = 0.0
        self._last_poll = 0.0
        self._stop = False
        self.shutdown = False

    def stage(self, name: str) -> None:
        self.progress_state.stage = name
        self._write()

    def progress(self, step: int, total: int, losses: dict[str, float]) -> None:
        self.progress_state = JobProgress(stage="optimizing", step=step, total=total, losses=losses)
        if step >= total or time.monotonic() - self._last_write >= PROGRESS_INTERVAL:
            self._write()

    def should_stop(self) -> bool:
        if self.runtime.shutdown.is_set():
            self.shutdown = True
            return True
        if time.monotonic() - self._last_poll >= 0.1:  # one Redis read per 100 ms at most
            self._last_poll = time.monotonic()
            self._stop = bool(self.runtime.redis.exists(stop_key(self.job.id)))
        return self._stop

    def _write(self) -> None:
        self._last_write = time.monotonic()
        self.job.meta["progress"] = self.progress_state.model_dump()
        self.job.save_meta()
        announce(self.runtime.redis, self.job.id)


ERRORS: dict[type[Exception], str] = {
    NotFoundError: "latent_not_found",
    VectorNotFoundError: "vector_not_found",
    ReadOnlyVectorError: "vector_read_only",
    ModelMismatchError: "model_mismatch",
    ForbiddenError: "forbidden",
}
HANDLED: tuple[type[Exception], ...] = (EngineError, *ERRORS)  # recorded as the job's {code, message}


@contextmanager
def _job_context(payload: dict[str, Any]) -> Iterator[tuple[Runtime, Job, Reporter]]:
    runtime, job = current(), get_current_job()
    if job is None:
        raise RuntimeError("job functions run inside an rq worker")
    # The job reads and writes as the API key that submitted it (None: keys off).
    runtime = dataclasses.replace(runtime, store=runtime.store.scoped(payload.get("owner")))
    reporter = Reporter(job, runtime)
    reporter.stage("loading")
    try:
        yield runtime, job, reporter
    except CancelledError:
        if reporter.shutdown:
            raise ShutdownRequestedError("the worker is shutting down") from None
        raise
    except HANDLED as exc:
        code = getattr(exc, "code", None) or ERRORS.get(type(exc), "invalid_input")
        if isinstance(exc, NotFoundError):
            code = "latent_not_found" if exc.kind == "latent" else "invalid_input"
        job.meta["error"] = {"code": code if code != "engine_error" else "job_failed", "message": str(exc)}
        job.save_meta()
        raise


def _bundle(runtime: Runtime, model: str) -> Bundle:
    if model not in runtime.bundles:
        raise EngineError(f"this worker does not serve model {model!r}")
    return runtime.bundles[model]


def _latent(runtime: Runtime, bundle: Bundle, latent_id: str) -> torch.Tensor:
    stored = runtime.store.get_latent(latent_id)
    if stored.model != bundle.spec.name:
        raise ModelMismatchError(f"latent {latent_id} belongs to model {stored.model!r}, not {bundle.spec.name!r}")
    return torch.from_numpy(stored.array).to(bundle.device)


def _upload(runtime: Runtime, upload_id: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(runtime.store.get_png(upload_id, kind="upload"))))


def _outputs(payload: dict[str, Any]) -> list[Output]:
    return [Output(o) for o in payload.get("outputs", list(Output))]


def _params(rt: Runtime, payload: dict[str, Any], bundle: Bundle) -> dict[str, Any]:
    """The request's steps and the worker's EDITGAN_PRECISION and EDITGAN_CUDA_GRAPHS (for a model on a
    GPU), over the bundle's defaults."""
    params: dict[str, Any] = {"steps": int(payload["steps"])} if payload.get("steps") is not None else {}
    if rt.settings.editgan_precision is not None:
        params["precision"] = rt.settings.editgan_precision
    if rt.settings.editgan_cuda_graphs and bundle.device.type == "cuda":
        params["cuda_graphs"] = True
    return params


def run_invert(payload: dict[str, Any]) -> dict[str, Any]:
    """{model, upload_id, steps?} -> InvertResult."""
    with _job_context(payload) as (rt, _, reporter):
        bundle = _bundle(rt, payload["model"])
        canvas = torch.from_numpy(_upload(rt, payload["upload_id"]).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        reset_peak(bundle.device)
        start = time.perf_counter()
        inv = invert(
            bundle,
            canvas,
            perceptual=rt.perceptual(bundle),
            params=_params(rt, payload, bundle),
            progress=reporter.progress,
            should_stop=reporter.should_stop,
        )
        seconds = elapsed(start, bundle.device)
        reporter.stage("storing")
        arrays = rendering_arrays(bundle, inv.rendering, 0, _outputs(payload))
        latent_id, images = publish(rt.store, bundle.spec.name, inv.w_plus[0].cpu().numpy(), arrays)
        metrics = Metrics(
            seconds=round(seconds, 3),
            steps=len(inv.history) - 1,
            best_step=inv.best_step,
            psnr=round(inv.psnr, 3),
            losses=inv.losses,
            precision=inv.params["precision"],
            peak_device_memory_gib=peak_gib(bundle.device),
        )
        return InvertResult(latent_id=latent_id, model=bundle.spec.name, images=images, metrics=metrics).model_dump(
            mode="json"
        )


def run_optimize(payload: dict[str, Any]) -> dict[str, Any]:
    """{model, latent_id, mask_id, roi_id?, region?, steps?, save_vector_as?, description} -> OptimizeEditResult."""
    with _job_context(payload) as (rt, _, reporter):
        bundle = _bundle(rt, payload["model"])
        w = _latent(rt, bundle, payload["latent_id"])
        mask = torch.from_numpy(_upload(rt, payload["mask_id"]).astype(np.int64))
        roi_id = payload.get("roi_id")
        painted = torch.from_numpy(_upload(rt, roi_id) > 0) if roi_id else None
        name = payload.get("save_vector_as")
        if name:
            check_new_name(bundle, name)  # refuse before spending the optimisation on it
        reset_peak(bundle.device)
        start = time.perf_counter()
        edit = optimize_edit(
            bundle,
            w,
            mask,
            payload.get("region"),
            perceptual=rt.perceptual(bundle),
            params=_params(rt, payload, bundle),
            description=payload.get("description", ""),
            progress=reporter.progress,
            should_stop=reporter.should_stop,
            painted=painted,
        )
        seconds = elapsed(start, bundle.device)
        reporter.stage("storing")
        vector = edit.vector
        delta = vector.delta.cpu().numpy()
        edit_id = rt.store.put_edit(bundle.spec.name, delta, vector.classes, vector.region)
        saved = None
        if name:
            saved = VectorRef(name=name, version=save_vector(rt.registry, bundle, name, vector))
        arrays = rendering_arrays(bundle, edit.rendering, 0, _outputs(payload))
        arrays["region"] = edit.region.cpu().numpy().astype(np.uint8) * 255
        latent_id, images = publish(rt.store, bundle.spec.name, edit.w_plus[0].cpu().numpy(), arrays)
        last = edit.history[edit.best_step] if edit.history else {}
        return OptimizeEditResult(
            latent_id=latent_id,
            model=bundle.spec.name,
            images=images,
            vector=EditVectorInfo(edit_id=edit_id, saved_as=saved, classes=vector.classes, region=vector.region),
            metrics=Metrics(
                seconds=round(seconds, 3),
                steps=len(edit.history) - 1,
                best_step=edit.best_step,
                losses=last,
                precision=edit.params["precision"],
                peak_device_memory_gib=peak_gib(bundle.device),
            ),
        ).model_dump(mode="json")


def run_refine(payload: dict[str, Any]) -> dict[str, Any]:
    """{model, latent_id, vectors: [{vector, scale}], refine_steps, outputs} -> VectorEditResult."""
    with _job_context(payload) as (rt, _, reporter):
        bundle = _bundle(rt, payload["model"])
        w = _latent(rt, bundle, payload["latent_id"])
        terms = [VectorTerm.model_validate(t) for t in payload["vectors"]]
        resolved = [resolve(t.vector, bundle, rt.registry, rt.store) for t in terms]
        reset_peak(bundle.device)
        start = time.perf_counter()
        result = refine(
            bundle,
            w,
            [(r.vector, t.scale) for r, t in zip(resolved, terms, strict=True)],
            int(payload["refine_steps"]),
            perceptual=rt.perceptual(bundle),
            params=_params(rt, {}, bundle),
            progress=reporter.progress,
            should_stop=reporter.should_stop,
        )
        seconds = elapsed(start, bundle.device)
        reporter.stage("storing")
        arrays = rendering_arrays(bundle, result.rendering, 0, _outputs(payload))
        latent_id, images = publish(rt.store, bundle.spec.name, result.w_plus[0].cpu().numpy(), arrays)
        last = result.history[result.best_step] if result.history else {}
        return VectorEditResult(
            latent_id=latent_id,
            model=bundle.spec.name,
            images=images,
            vectors=[VectorTerm(vector=r.ref, scale=t.scale) for r, t in zip(resolved, terms, strict=True)],
            metrics=Metrics(
                seconds=round(seconds, 3),
                steps=int(payload["refine_steps"]),
                best_step=result.best_step,
                losses=last,
                precision=result.params.get("precision"),
                peak_device_memory_gib=peak_gib(bundle.device),
            ),
            segmentation_members=len(bundle.segmenter.classifiers()),
        ).model_dump(mode="json")


JOB_FUNCTIONS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "invert": run_invert,
    "optimize": run_optimize,
    "refine": run_refine,
}
