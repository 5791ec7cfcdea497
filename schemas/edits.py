"""Request and result contracts of the editing endpoints.

Images travel as multipart uploads in and as PNG URLs out (`/results/{id}.png`); latents and vectors travel
by id. Every number has bounds; the gateway also caps steps at EDITGAN_MAX_STEPS.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

# Ids minted by the stores: a prefix, then 22 URL-safe characters (128 random bits).
LATENT_ID = r"^lat_[A-Za-z0-9_-]{22}$"
IMAGE_ID = r"^img_[A-Za-z0-9_-]{22}$"
EDIT_ID = r"^edv_[A-Za-z0-9_-]{22}$"
# Registry names: lower case, digits, `_ . -`; optionally `@version`.
VECTOR_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
VECTOR_REF = r"^(edv_[A-Za-z0-9_-]{22}|[a-z0-9][a-z0-9_.-]{0,63}(@(0|[1-9][0-9]{0,8}))?)$"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Fit(StrEnum):
    """How an upload of another size or aspect becomes the model's canvas."""

    crop = "crop"  # scale to cover the content box, centre crop
    pad = "pad"  # scale to fit inside it, pad with black
    stretch = "stretch"  # resize to the content box, ignoring aspect


class Output(StrEnum):
    image = "image"  # the RGB render of the content box
    segmentation = "segmentation"  # class ids as an 8-bit grey PNG (pixel value = class id)
    segmentation_color = "segmentation_color"  # the model's palette
    uncertainty = "uncertainty"  # ensemble disagreement, 8-bit grey


class ImageLinks(BaseModel):
    """URLs of result PNGs (or `data:` URLs when asked inline); absent when not requested."""

    image: str | None = None
    segmentation: str | None = None
    segmentation_color: str | None = None
    uncertainty: str | None = None
    region: str | None = Field(None, description="Optimisation edits: the region of interest, white = inside.")


class VectorTerm(BaseModel):
    """One editing vector and its scale: w' = w + scale * delta."""

    vector: str = Field(
        pattern=VECTOR_REF,
        description="A registry name (`smile`, or `smile@2` for a version) or an unsaved edit's id (`edv_...`).",
        examples=["smile"],
    )
    scale: float = Field(1.0, ge=-10.0, le=10.0, allow_inf_nan=False, description="Multiplier of the vector.")


class VectorEditRequest(BaseModel):
    """Apply vectors to a stored latent: synchronous without refinement, a job with it."""

    latent_id: str = Field(pattern=LATENT_ID, description="From an inversion, an edit or `POST /latents`.")
    vectors: list[VectorTerm] = Field(min_length=1, max_length=16)
    refine_steps: int = Field(
        0,
        ge=0,
        le=5000,
        description="0: vector only (real time, 200); > 0: a job (202), of at most EDITGAN_MAX_STEPS steps "
        "(`max_steps` of `GET /models`).",
    )
    outputs: list[Output] = Field(
        default_factory=lambda: list(Output),
        description="Which PNGs to produce. The uncertainty map is computed only when asked for (4-9 % of a render).",
    )
    inline: bool = Field(
        False,
        description="Return PNGs as data: URLs in the body instead of result URLs. Real-time edits only: a "
        "refinement job's result keeps URLs (a job's result lives in Redis, polled many times).",
    )
    preview: bool = Field(
        False,
        description="Segment by a few ensemble members (EDITGAN_PREVIEW_MEMBERS) for interactive use, e.g. "
        "while a slider moves: the same image, labels that may differ on a few pixels, about half the time. "
        "Real-time edits only; refinement always uses the whole ensemble. Its result is kept for "
        "EDITGAN_PREVIEW_TTL seconds, not EDITGAN_RESULT_TTL.",
    )

    model_config = {
        "json_schema_extra": {
            "examples": [{"latent_id": "lat_" + "A" * 22, "vectors": [{"vector": "smile", "scale": 1.5}]}]
        }
    }


class SaveVectorFromEdit(BaseModel):
    """Keep an optimisation edit's vector in the registry under a name."""

    edit_id: str = Field(pattern=EDIT_ID, description="`vector.edit_id` of an optimisation edit's result.")
    name: str = Field(pattern=VECTOR_NAME)
    description: str = Field("", max_length=500)


class VectorRef(BaseModel):
    name: str
    version: int


class Metrics(BaseModel):
    """Numbers a result reports; absent terms were not computed."""

    seconds: float = Field(description="Time in the engine.")
    steps: int = 0
    best_step: int = 0
    psnr: float | None = Field(None, description="Inversion: dB against the input inside the content box.")
    losses: dict[str, float] = Field(default_factory=dict)
    precision: str | None = Field(None, description="Jobs: the optimisation loop's arithmetic (EDITGAN_PRECISION).")
    peak_device_memory_gib: float | None = Field(
        None, description="Jobs on a GPU: the most GPU memory the job's tensors held (null on a CPU)."
    )


class InvertResult(BaseModel):
    latent_id: str
    model: str
    images: ImageLinks
    metrics: Metrics


class EditVectorInfo(BaseModel):
    """The vector an optimisation edit produced: always usable by `edit_id`, by name once saved."""

    edit_id: str
    saved_as: VectorRef | None = None
    classes: list[int]
    region: str | None = None


class OptimizeEditResult(BaseModel):
    latent_id: str
    model: str
    images: ImageLinks
    vector: EditVectorInfo
    metrics: Metrics


class VectorEditResult(BaseModel):
    latent_id: str
    model: str
    images: ImageLinks
    vectors: list[VectorTerm] = Field(description="The terms applied, with versions resolved.")
    metrics: Metrics
    segmentation_members: int | None = Field(None, description="Ensemble members behind the labels.")


class LatentInfo(BaseModel):
    latent_id: str
    model: str


class SampleRequest(BaseModel):
    """A latent to edit without a photo: a seeded random sample of the generator, or one of the model's examples."""

    model: str | None = Field(None, pattern=MODEL_NAME, description="Default: the only model served.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Seed of a random sample; default: a new one.")
    example: int | None = Field(
        None, ge=0, le=65535, description="Index of one of the model's example latents (`examples` of the model)."
    )

    model_config = {"json_schema_extra": {"examples": [{"seed": 7}, {"example": 0}]}}


class SampleResult(BaseModel):
    """The stored latent and its rendering (image, segmentation, uncertainty), like an inversion's result."""

    latent_id: str
    model: str
    seed: int | None = Field(None, description="The seed sampled (null for an example latent).")
    example: int | None = Field(None, description="The example latent's index (null for a random sample).")
    images: ImageLinks
