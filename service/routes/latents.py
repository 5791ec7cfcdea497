"""Latents (`.npy` in and out) and result images (`/results/{id}.png`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Response, UploadFile

from engine.npyio import read_w_plus, write_npy
from schemas.edits import IMAGE_ID, LATENT_ID, MODEL_NAME, LatentInfo
from service.deps import ServicesDep
from service.routes.common import ERRORS
from service.uploads import read_limited

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
    w = read_w_plus(data, bundle.spec.n_latent, bundle.spec.generator.style_dim, what="latent")
    latent_id = services.store.put_latent(bundle.spec.name, w.numpy())
    response.headers["Location"] = f"/latents/{latent_id}"
    return LatentInfo(latent_id=latent_id, model=bundle.spec.name)


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
        "Cache-Control": f"private, max-age={services.settings.editgan_result_ttl}, immutable",
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
    headers = {"Cache-Control": f"private, max-age={services.settings.editgan_result_ttl}, immutable"}
    return Response(png, media_type="image/png", headers=headers)
