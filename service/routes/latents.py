"""Latents (`.npy` in and out, random samples to start from) and result images (`/results/{id}.png`)."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Path, Response, UploadFile

from engine import Bundle
from engine.npyio import read_w_plus, write_npy
from schemas.edits import IMAGE_ID, LATENT_ID, MODEL_NAME, LatentInfo, Output, SampleRequest, SampleResult
from schemas.errors import ErrorCode
from service.batching import RenderRequest
from service.deps import ServicesDep
from service.errors import ApiError
from service.routes.common import ERRORS
from service.uploads import check_npy_header, read_limited
from workers.results import publish, rendering_arrays

if TYPE_CHECKING:
    from torch import Tensor

router = APIRouter(tags=["latents"], responses=ERRORS)


@router.post("/latents", status_code=201, response_model=LatentInfo)
def upload_latent(
    services: ServicesDep,
    response: Response,
    file: Annotated[UploadFile, File(description="W+ `.npy`, float (L, S) or (1, L, S), e.g. an official embedding.")],
    model: Annotated[str | None, Form(pattern=MODEL_NAME)] = None,
) -> LatentInfo:
    """Store a W+ latent (for example one of the official release's embeddings) to edit it."""
    bundle = services.bundle(model)
    data = read_limited(file, services.settings.editgan_max_upload_bytes, "latent")
    check_npy_header(data, "latent")
    w = read_w_plus(data, bundle.spec.n_latent, bundle.spec.generator.style_dim, what="latent")
    latent_id = services.store.put_latent(bundle.spec.name, w.numpy())
    response.headers["Location"] = f"/latents/{latent_id}"
    return LatentInfo(latent_id=latent_id, model=bundle.spec.name)


def _starting_latent(bundle: Bundle, request: SampleRequest) -> tuple[Tensor, int | None]:
    """W+ [1, L, S]: the requested example latent, or a seeded sample at the model's truncation; and the seed."""
    if request.example is None:
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        psi = float(bundle.spec.defaults.get("sample", {}).get("truncation", 1.0))
        return bundle.generator.sample_w_plus(1, seed=seed, psi=psi), seed
    if request.seed is not None:
        raise ApiError(422, ErrorCode.invalid_input, "give `seed` or `example`, not both")
    examples = bundle.examples
    count = 0 if examples is None else int(examples.shape[0])
    if examples is None or request.example >= count:
        message = f"example {request.example} out of range: model {bundle.spec.name!r} has {count} example latents"
        raise ApiError(422, ErrorCode.invalid_input, message)
    return examples[request.example : request.example + 1], None


@router.post("/latents/sample", status_code=201, response_model=SampleResult)
def sample_latent(services: ServicesDep, request: SampleRequest, response: Response) -> SampleResult:
    """Start without a photo: store a random sample (or an example latent) of a model and render it."""
    bundle = services.bundle(request.model)
    w, seed = services.on_engine(_starting_latent, bundle, request)
    arrays: dict[str, np.ndarray] = services.render(
        bundle.spec.name, RenderRequest(w, lambda rendering: rendering_arrays(bundle, rendering, 0, list(Output)))
    )
    latent_id, images = publish(services.store, bundle.spec.name, w[0].cpu().numpy(), arrays)
    response.headers["Location"] = f"/latents/{latent_id}"
    return SampleResult(latent_id=latent_id, model=bundle.spec.name, seed=seed, example=request.example, images=images)


@router.get(
    "/latents/{latent_id}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "float32 (1, L, S) `.npy`."}},
)
def download_latent(services: ServicesDep, latent_id: Annotated[str, Path(pattern=LATENT_ID)]) -> Response:
    """A stored latent as `.npy` (float32, (1, L, S) like the official embeddings); `X-Model` names its model."""
    import torch

    stored = services.store.get_latent(latent_id)
    headers = {
        "Content-Disposition": f'attachment; filename="{latent_id}.npy"',
        "X-Model": stored.model,
        "Cache-Control": f"private, max-age={services.store.seconds_left('latent', latent_id)}, immutable",
    }
    data = write_npy(torch.from_numpy(stored.array), batch_axis=True)
    return Response(data, media_type="application/octet-stream", headers=headers)


@router.get(
    "/results/{image_id}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "A result image."}},
)
def get_result_image(services: ServicesDep, image_id: Annotated[str, Path(pattern=IMAGE_ID)]) -> Response:
    """A result PNG. Ids are never reused, so the response is immutable until it expires."""
    png = services.store.get_png(image_id)
    # Until it expires, not for the result TTL: a preview's image lives minutes (EDITGAN_PREVIEW_TTL).
    headers = {"Cache-Control": f"private, max-age={services.store.seconds_left('image', image_id)}, immutable"}
    return Response(png, media_type="image/png", headers=headers)


# HEAD of the downloads (caches and download managers ask for the size first): the same handlers, which
# uvicorn answers without the body; left out of the schema, where they would repeat the GET operations.
for _path, _handler in (("/latents/{latent_id}", download_latent), ("/results/{image_id}.png", get_result_image)):
    router.add_api_route(_path, _handler, methods=["HEAD"], include_in_schema=False, response_class=Response)
