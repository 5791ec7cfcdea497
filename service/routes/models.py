"""`GET /models`: what each served model is (classes, colours, regions, resolution, vectors)."""

from __future__ import annotations

from fastapi import APIRouter

from engine import Bundle
from engine.params import EditParams, InvertParams, RefineParams
from schemas.catalog import ClassOut, ContentBox, ModelInfo, ModelList
from service.deps import ServicesDep
from service.routes.common import ERRORS
from service.state import Services

router = APIRouter(prefix="/models", tags=["models"], responses=ERRORS)


def model_info(services: Services, bundle: Bundle) -> ModelInfo:
    spec = bundle.spec
    assert spec.geometry is not None
    top, left, height, width = spec.geometry.box
    defaults = {
        "invert": InvertParams.resolve(spec.defaults.get("invert")).steps,
        "edit": EditParams.resolve(spec.defaults.get("edit")).steps,
        "refine": RefineParams.resolve(spec.defaults.get("refine")).steps,
    }
    return ModelInfo(
        name=spec.name,
        version=spec.version,
        resolution=spec.resolution,
        content_box=ContentBox(top=top, left=left, height=height, width=width),
        n_latent=spec.n_latent,
        style_dim=spec.generator.style_dim,
        classes=[ClassOut(id=c.id, name=c.name, color=c.color) for c in spec.classes],
        regions=spec.regions,
        vectors=sorted(set(bundle.vectors) | set(services.registry.names(spec.name))),
        has_encoder=bundle.encoder is not None,
        default_steps=defaults,
        max_steps=services.settings.editgan_max_steps,
        examples=0 if bundle.examples is None else int(bundle.examples.shape[0]),
    )


@router.get("", response_model=ModelList)
def list_models(services: ServicesDep) -> ModelList:
    """Every model this service serves."""
    return ModelList(models=[model_info(services, b) for b in services.bundles.values()])


@router.get("/{name}", response_model=ModelInfo)
def get_model(services: ServicesDep, name: str) -> ModelInfo:
    """One model."""
    return model_info(services, services.bundle(name))
