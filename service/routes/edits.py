"""`POST /invert`, `POST /edit/optimize` (jobs) and `POST /edit/vector` (synchronous, or a refine job)."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, File, Form, Response, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from engine import Bundle, add_vectors
from schemas.edits import (
    LATENT_ID,
    MODEL_NAME,
    VECTOR_NAME,
    Fit,
    Metrics,
    Output,
    VectorEditRequest,
    VectorEditResult,
    VectorTerm,
)
from schemas.errors import ErrorCode
from schemas.jobs import JobAccepted, JobKind
from service.batching import RenderRequest
from service.deps import ServicesDep
from service.errors import ApiError
from service.idempotency import Idempotency, fingerprint
from service.routes.common import (
    ACCEPTED_HEADERS,
    CONFLICTS,
    ERRORS,
    IdempotencyKey,
    RefineIdempotencyKey,
    check_steps,
    submit,
)
from service.server_timing import HEADER, Phases
from service.state import Services
from service.uploads import decode_canvas, decode_mask, decode_painted, read_limited
from workers.png import png_bytes
from workers.results import apublish, rendering_arrays
from workers.vectors import ModelMismatchError, Resolved, check_new_name, is_shipped, resolve

router = APIRouter(tags=["edits"], responses=ERRORS)
JOB_RESPONSES = CONFLICTS | {202: {"description": "The job, queued.", "headers": ACCEPTED_HEADERS}}

STEPS = "Optimisation steps (default: the model's); at most EDITGAN_MAX_STEPS (`max_steps` of `GET /models`)."


@router.post("/invert", status_code=202, response_model=JobAccepted, responses=JOB_RESPONSES)
def invert_image(
    services: ServicesDep,
    response: Response,
    image: Annotated[UploadFile, File(description="PNG, JPEG or WebP photo to embed.")],
    model: Annotated[str | None, Form(pattern=MODEL_NAME, description="Default: the only model served.")] = None,
    fit: Annotated[Fit, Form(description="How another size or aspect becomes the model's canvas.")] = Fit.crop,
    steps: Annotated[int | None, Form(ge=1, le=5000, description=STEPS)] = None,
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    """Embed an image into W+ (encoder, then optimisation): a job whose result holds a latent id."""
    bundle = services.bundle(model)
    check_steps(steps, services)
    data = read_limited(image, services.settings.editgan_max_upload_bytes, "image")
    asked = {"route": "invert", "image": data, "model": bundle.spec.name, "fit": fit.value, "steps": steps}
    idem = Idempotency(idempotency_key, fingerprint(**asked)) if idempotency_key else None
    canvas = decode_canvas(data, bundle, fit.value, services.settings.editgan_max_image_pixels)

    def payload() -> dict[str, object]:  # stored once the key is reserved: a replay stores nothing
        upload_id = services.store.put_png(png_bytes(canvas), kind="upload")
        return {"model": bundle.spec.name, "upload_id": upload_id, "steps": steps}

    return submit(services, response, JobKind.invert, bundle.spec.name, payload, idem)


@router.post("/edit/optimize", status_code=202, response_model=JobAccepted, responses=JOB_RESPONSES)
def optimize(
    services: ServicesDep,
    response: Response,
    latent_id: Annotated[str, Form(pattern=LATENT_ID, description="The latent whose segmentation was edited.")],
    mask: Annotated[UploadFile, File(description="Edited segmentation PNG: class ids, or the model's colours.")],
    region: Annotated[
        str | None,
        Form(
            description="Region name (class group): the vector's classes; without `roi`, the edit's region is "
            "then every pixel of those classes before or after the edit. Default: the classes painted."
        ),
    ] = None,
    steps: Annotated[int | None, Form(ge=1, le=5000, description=STEPS)] = None,
    save_vector_as: Annotated[
        str | None, Form(pattern=VECTOR_NAME, description="Registry name for the vector.")
    ] = None,
    description: Annotated[str, Form(max_length=500)] = "",
    roi: Annotated[
        UploadFile | None,
        File(
            description="Optional PNG of the pixels brushed (non-zero or opaque), the mask's size: the edit's "
            "region is those pixels dilated, as in the official tool (every changed pixel must lie in it). "
            "Default: the pixels the mask changes."
        ),
    ] = None,
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    """Optimise the latent so its segmentation matches the edited mask: a job; yields an editing vector."""
    stored = services.store.get_latent(latent_id)
    bundle = services.bundle(stored.model)
    check_steps(steps, services)
    if region is not None and region not in bundle.spec.regions:
        raise ApiError(
            422, ErrorCode.invalid_input, f"unknown region {region!r}; the model has {sorted(bundle.spec.regions)}"
        )
    if save_vector_as is not None:
        check_new_name(bundle, save_vector_as)  # before the job runs: a shipped or reserved name is refused now
    mask_data = read_limited(mask, services.settings.editgan_max_upload_bytes, "mask")
    labels = decode_mask(mask_data, bundle)
    roi_data = read_limited(roi, services.settings.editgan_max_upload_bytes, "roi") if roi is not None else None
    painted = decode_painted(roi_data, bundle) if roi_data is not None else None
    fields: dict[str, object] = {
        "model": bundle.spec.name,
        "latent_id": latent_id,
        "region": region,
        "steps": steps,
        "save_vector_as": save_vector_as,
        "description": description,
    }
    # matched on the uploads' bytes, not their ids (new ones each time)
    asked = fields | {"route": "optimize", "mask": mask_data, "roi": roi_data}
    idem = Idempotency(idempotency_key, fingerprint(**asked)) if idempotency_key else None

    def payload() -> dict[str, object]:  # stored once the key is reserved: a replay stores nothing
        stored = fields | {"mask_id": services.store.put_png(png_bytes(labels), kind="upload")}
        if painted is not None:
            stored["roi_id"] = services.store.put_png(png_bytes(painted), kind="upload")
        return stored

    return submit(services, response, JobKind.optimize, bundle.spec.name, payload, idem)


@router.post(
    "/edit/vector",
    response_model=VectorEditResult,
    responses={
        **CONFLICTS,
        200: {
            "description": "The edit (without `refine_steps`).",
            "headers": {
                HEADER: {
                    "description": "The gateway's phases in ms (`latent`, `vectors`, `engine`, `store`, and `route` "
                    "in all), unless EDITGAN_SERVER_TIMING is off.",
                    "schema": {"type": "string"},
                }
            },
        },
        202: {
            "model": JobAccepted,
            "description": "With `refine_steps` > 0: a refinement job.",
            "headers": ACCEPTED_HEADERS,
        },
    },
)
async def edit_with_vectors(
    services: ServicesDep,
    request: VectorEditRequest,
    response: Response,
    idempotency_key: RefineIdempotencyKey = None,
) -> Response:
    """Apply editing vectors at chosen scales: real time (200) without refinement, a job (202) with it."""
    # On the event loop: the latent read and the result write go through the asyncio Redis client and the
    # render is awaited from the engine thread. As a sync route, its thread-pool hop and the two wake-ups
    # around the engine thread cost about 0.45 ms of a 4 ms path on 2 cores. Vectors from the registry (a
    # blocking read) and job submissions still run in the thread pool.
    phases = Phases()
    stored = await services.store.aget_latent(request.latent_id)
    phases.mark("latent")
    bundle = services.bundle(stored.model)
    check_steps(request.refine_steps or None, services)
    refs = [t.vector for t in request.vectors]
    if request.refine_steps > 0:
        asked = {
            "model": bundle.spec.name,
            "latent_id": request.latent_id,
            "vectors": [t.model_dump() for t in request.vectors],  # as sent: `smile`, not the version it resolves to
            "refine_steps": request.refine_steps,
            "outputs": [o.value for o in request.outputs],
        }
        idem = Idempotency(idempotency_key, fingerprint(route="refine", **asked)) if idempotency_key else None

        def payload() -> dict[str, object]:  # resolved once the key is reserved: a retry replays, resolving nothing
            resolved = _resolve_all(refs, bundle, services)
            pinned = [VectorTerm(vector=r.ref, scale=t.scale) for r, t in zip(resolved, request.vectors, strict=True)]
            return asked | {"vectors": [t.model_dump() for t in pinned]}

        accepted = await run_in_threadpool(submit, services, response, JobKind.refine, bundle.spec.name, payload, idem)
        headers = {k: v for k, v in response.headers.items() if k in ("location", "idempotent-replayed")}
        return JSONResponse(accepted.model_dump(mode="json"), status_code=202, headers=headers)

    if all(is_shipped(ref, bundle) for ref in refs):
        resolved = _resolve_all(refs, bundle, services)
    else:
        resolved = await run_in_threadpool(_resolve_all, refs, bundle, services)
    terms = [VectorTerm(vector=r.ref, scale=t.scale) for r, t in zip(resolved, request.vectors, strict=True)]
    w = torch.from_numpy(stored.array)
    start = time.perf_counter()
    # The arithmetic (and its input checks) stays in this request; the render may share a batched pass. On
    # the CPU, where the latent and the vectors are, whatever the models' device: the engine thread moves
    # the batch, and the event loop never waits behind queued GPU work.
    pairs = [(r.vector, t.scale) for r, t in zip(resolved, request.vectors, strict=True)]
    edited = add_vectors(bundle, w, pairs, device=torch.device("cpu"))
    phases.mark("vectors")
    members = services.preview_members(bundle.spec.name) if request.preview else None
    arrays: dict[str, np.ndarray] = await services.arender(
        bundle.spec.name,
        RenderRequest(
            edited,
            lambda rendering: rendering_arrays(bundle, rendering, 0, request.outputs),
            members,
            uncertainty=Output.uncertainty in request.outputs,  # the map is 4-9 % of a render: only when asked
        ),
    )
    seconds = time.perf_counter() - start
    phases.mark("engine")  # waiting for the engine thread (and a batch's company), the pass, the arrays
    # A preview is provisional (the full edit follows it when a slider stops): kept briefly, so that a drag's
    # many results do not fill Redis for a day.
    settings = services.settings
    ttl = min(settings.editgan_preview_ttl, settings.editgan_result_ttl) if request.preview else None
    latent_id, images = await apublish(
        services.store, bundle.spec.name, edited[0].numpy(), arrays, inline=request.inline, ttl=ttl
    )
    phases.mark("store")  # PNGs and the Redis transaction
    result = VectorEditResult(
        latent_id=latent_id,
        model=bundle.spec.name,
        images=images,
        vectors=terms,
        metrics=Metrics(seconds=round(seconds, 4)),
        segmentation_members=members or len(bundle.segmenter.classifiers()),
    )
    # Serialised here: a Response skips FastAPI's revalidation of the response model. The model is built
    # validated.
    body = result.model_dump_json()
    timing = {HEADER: phases.header()} if settings.editgan_server_timing else None
    return Response(body, media_type="application/json", headers=timing)


def _resolve_all(refs: list[str], bundle: Bundle, services: Services) -> list[Resolved]:
    resolved = [resolve(ref, bundle, services.registry, services.store) for ref in refs]
    for r in resolved:
        if r.vector.model != bundle.spec.name:
            raise ModelMismatchError(
                f"vector {r.ref} belongs to {r.vector.model!r}, the latent to {bundle.spec.name!r}"
            )
    return resolved
