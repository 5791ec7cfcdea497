"""The editing-vector registry over HTTP: list, inspect, upload/download official `.npy`, save, delete."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from fastapi import APIRouter, File, Form, Path, Query, Response, UploadFile

from engine import EditingVector
from engine.npyio import write_npy
from schemas.catalog import VectorInfo, VectorList
from schemas.edits import MODEL_NAME, VECTOR_NAME, SaveVectorFromEdit, VectorRef
from schemas.errors import ErrorBody, ErrorCode
from service.deps import ServicesDep
from service.errors import ApiError
from service.routes.common import CONFLICTS, ERRORS, LOCATION
from service.state import Services
from service.uploads import check_npy_header, read_limited
from workers.registry import ReadOnlyVectorError, VectorNotFoundError, VectorRecord
from workers.vectors import ModelMismatchError, bundle_vector, save_vector

router = APIRouter(prefix="/vectors", tags=["vectors"], responses=ERRORS)
CREATED = CONFLICTS | {201: {"description": "The vector, saved.", "headers": LOCATION}}
READ_ONLY: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "`vector_read_only`: a vector shipped with the model cannot be deleted."}
}
ModelName = Annotated[str, Path(pattern=MODEL_NAME)]
VectorName = Annotated[str, Path(pattern=VECTOR_NAME)]
Version = Annotated[int | None, Query(ge=0, description="Default: the latest; 0 = shipped with the model.")]


def _shipped_info(services: Services, model: str, name: str) -> VectorInfo:
    vector = bundle_vector(services.bundle(model), name)
    return VectorInfo(
        model=model,
        name=name,
        version=0,
        versions=[0],
        source="bundle",
        classes=vector.classes,
        region=vector.region,
        description=vector.description,
        scale_range=vector.scale_range,
        created_at=vector.created_at or None,
        norm=round(float(vector.delta.norm()), 6),
    )


def _record_info(record: VectorRecord) -> VectorInfo:
    meta = record.meta
    return VectorInfo(
        model=record.model,
        name=record.name,
        version=record.version,
        versions=record.versions,
        source="registry",
        classes=meta.get("classes", []),
        region=meta.get("region"),
        description=meta.get("description", ""),
        scale_range=tuple(meta.get("scale_range", (-2.0, 2.0))),
        created_at=meta.get("created_at"),
        norm=meta.get("norm", 0.0),
    )


@router.get("", response_model=VectorList)
def list_vectors(services: ServicesDep, model: Annotated[str | None, Query(pattern=MODEL_NAME)] = None) -> VectorList:
    """Every vector (shipped ones as version 0, registry ones at their latest version), optionally of one model."""
    names = [model] if model is not None else sorted(services.bundles)
    infos: list[VectorInfo] = []
    for name in names:
        bundle = services.bundle(name)
        infos += [_shipped_info(services, name, v) for v in sorted(bundle.vectors)]
        infos += [_record_info(r) for r in services.registry.list(name)]
    return VectorList(vectors=infos, count=len(infos))


@router.get("/{model}/{name}", response_model=VectorInfo)
def get_vector(services: ServicesDep, model: ModelName, name: VectorName, version: Version = None) -> VectorInfo:
    """One vector's metadata (and the list of its versions)."""
    bundle = services.bundle(model)
    if name in bundle.vectors and version in (None, 0):
        return _shipped_info(services, model, name)
    if version == 0:
        raise VectorNotFoundError(model, name, 0)
    return _record_info(services.registry.get(model, name, version))


@router.get(
    "/{model}/{name}/npy",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "Official float32 (1, L, S)."}},
)
def download_vector(services: ServicesDep, model: ModelName, name: VectorName, version: Version = None) -> Response:
    """The vector in the official EditGAN `.npy` format, float32 (1, L, S)."""
    bundle = services.bundle(model)
    if name in bundle.vectors and version in (None, 0):
        data, version_out = bundle_vector(bundle, name).to_npy(), 0
    else:
        if version == 0:
            raise VectorNotFoundError(model, name, 0)
        record = services.registry.get(model, name, version)
        data, version_out = write_npy(torch.from_numpy(record.delta), batch_axis=True), record.version
    headers = {"Content-Disposition": f'attachment; filename="{name}@{version_out}.npy"'}
    return Response(data, media_type="application/octet-stream", headers=headers)


# HEAD as on the other downloads (`service/routes/latents.py`): outside the schema, which has the GET.
router.add_api_route("/{model}/{name}/npy", download_vector, methods=["HEAD"], include_in_schema=False)


def _save(services: Services, model: str, vector: EditingVector, name: str) -> VectorRef:
    return VectorRef(name=name, version=save_vector(services.registry, services.bundle(model), name, vector))


@router.post("", status_code=201, response_model=VectorInfo, responses=CREATED)
def upload_vector(
    services: ServicesDep,
    response: Response,
    file: Annotated[UploadFile, File(description="Official `.npy`: float32 (1, L, S) or (L, S). No pickles.")],
    name: Annotated[str, Form(pattern=VECTOR_NAME)],
    model: Annotated[str | None, Form(pattern=MODEL_NAME)] = None,
    region: Annotated[str | None, Form(description="The class group it edits (a model region).")] = None,
    classes: Annotated[str | None, Form(pattern=r"^\d{1,3}(,\d{1,3}){0,255}$", description="Or class ids: 1,2")] = None,
    description: Annotated[str, Form(max_length=500)] = "",
    scale_min: Annotated[
        float, Form(ge=-10, le=10, description="Advertised slider range (`/edit/vector` allows +-10).")
    ] = -2.0,
    scale_max: Annotated[float, Form(ge=-10, le=10)] = 2.0,
) -> VectorInfo:
    """Store an official `.npy` vector as a new version of `name`."""
    bundle = services.bundle(model)
    data = read_limited(file, services.settings.editgan_max_upload_bytes, "vector")
    check_npy_header(data, "vector")
    ids = [int(c) for c in classes.split(",")] if classes else None
    if region is None and not ids:
        raise ApiError(422, ErrorCode.invalid_input, "give the vector's class group: `region` or `classes`")
    vector = EditingVector.from_npy(
        data, bundle.spec, region=region, classes=ids, description=description, scale_range=(scale_min, scale_max)
    )
    ref = _save(services, bundle.spec.name, vector, name)
    response.headers["Location"] = f"/vectors/{bundle.spec.name}/{name}?version={ref.version}"
    return _record_info(services.registry.get(bundle.spec.name, name, ref.version))


@router.post("/from-edit", status_code=201, response_model=VectorInfo, responses=CREATED)
def save_edit_vector(services: ServicesDep, request: SaveVectorFromEdit, response: Response) -> VectorInfo:
    """Keep an optimisation edit's vector (its `edit_id`) in the registry under a name."""
    stored = services.store.get_edit(request.edit_id)
    bundle = services.bundle(stored.model)
    classes = [int(c) for c in stored.meta.get("classes", "").split(",") if c]
    vector = EditingVector(
        delta=torch.from_numpy(stored.array),
        model=bundle.spec.name,
        classes=classes,
        region=stored.meta.get("region") or None,
        description=request.description,
    ).check(bundle.spec)
    ref = _save(services, bundle.spec.name, vector, request.name)
    response.headers["Location"] = f"/vectors/{bundle.spec.name}/{request.name}?version={ref.version}"
    return _record_info(services.registry.get(bundle.spec.name, request.name, ref.version))


@router.delete("/{model}/{name}", status_code=204, response_class=Response, responses=READ_ONLY)
def delete_vector(services: ServicesDep, model: ModelName, name: VectorName) -> Response:
    """Delete every version of a registry vector (shipped vectors are read-only)."""
    bundle = services.bundle(model)
    if name in bundle.vectors:
        raise ReadOnlyVectorError(f"{name!r} is shipped with model {model!r} and cannot be deleted")
    services.registry.delete(model, name)
    return Response(status_code=204)


__all__ = ["ModelMismatchError", "router"]
