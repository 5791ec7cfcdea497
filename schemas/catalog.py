"""What the service serves: models and the editing-vector registry."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ClassOut(BaseModel):
    id: int
    name: str
    color: str = Field(description="#rrggbb in the model's palette (colourised masks use it).")


class ContentBox(BaseModel):
    """Where the content sits on the generator's square canvas; images and masks are this size."""

    top: int
    left: int
    height: int
    width: int


class VectorInfo(BaseModel):
    """One vector of the registry (latest version unless a version was asked)."""

    model: str
    name: str
    version: int = Field(description="0 for vectors shipped inside the bundle (read-only).")
    versions: list[int]
    source: Literal["bundle", "registry"]
    classes: list[int]
    region: str | None = None
    description: str = ""
    scale_range: tuple[float, float] = (-2.0, 2.0)
    created_at: str | None = None
    norm: float


class VectorList(BaseModel):
    vectors: list[VectorInfo]
    count: int


class ModelInfo(BaseModel):
    name: str
    version: str
    resolution: int
    content_box: ContentBox
    n_latent: int
    style_dim: int
    classes: list[ClassOut]
    regions: dict[str, list[int]]
    vectors: list[str] = Field(description="Names usable in `/edit/vector` (bundle and registry).")
    has_encoder: bool
    default_steps: dict[str, int]
    max_steps: int = Field(
        ..., ge=1, description="The most steps a request to this service may ask for (EDITGAN_MAX_STEPS)."
    )
    examples: int = Field(0, ge=0, description="Example latents shipped with the model (`POST /latents/sample`).")


class ModelList(BaseModel):
    models: list[ModelInfo]
