"""Turning a vector reference (`name`, `name@version`, `edv_...`) into an `EditingVector` for a bundle."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine import Bundle, EditingVector, InputError
from workers.registry import ReadOnlyVectorError, Registry, VectorNotFoundError, VectorRecord
from workers.store import EDIT_PREFIX, NotFoundError, Store


class ModelMismatchError(ValueError):
    pass


@dataclass(frozen=True)
class Resolved:
    vector: EditingVector
    ref: str  # what was applied, version included: `smile@2`, `smile@0` (shipped), `edv_...`


def bundle_vector(bundle: Bundle, name: str) -> EditingVector:
    """A vector shipped inside the bundle (version 0 in the registry's numbering)."""
    if name not in bundle.vectors:
        raise VectorNotFoundError(bundle.spec.name, name, 0)
    meta = bundle.spec.vectors.get(name, {})
    region = meta.get("region")
    classes = list(meta.get("classes") or (bundle.spec.regions.get(region, []) if region else []))
    lo, hi = meta.get("scale_range", (-2.0, 2.0))
    return EditingVector(
        delta=bundle.vectors[name],
        model=bundle.spec.name,
        classes=sorted(classes),
        region=region,
        description=str(meta.get("description", "")),
        scale_range=(float(lo), float(hi)),
        created_at=str(meta.get("created_at", "")),
    )


def record_vector(bundle: Bundle, record: VectorRecord) -> EditingVector:
    lo, hi = record.meta.get("scale_range", (-2.0, 2.0))
    return EditingVector(
        delta=torch.from_numpy(record.delta),  # on the CPU, as a bundle's own (`Bundle.vectors`)
        model=record.model,
        classes=list(record.meta.get("classes", [])),
        region=record.meta.get("region"),
        description=record.meta.get("description", ""),
        scale_range=(float(lo), float(hi)),
        created_at=record.meta.get("created_at", ""),
    )


def _name_version(ref: str) -> tuple[str, int | None]:
    name, _, version_text = ref.partition("@")
    return name, int(version_text) if version_text else None


def is_shipped(ref: str, bundle: Bundle) -> bool:
    """Whether `resolve` finds `ref` in the bundle itself, without reading Redis."""
    if ref.startswith(EDIT_PREFIX):
        return False
    name, version = _name_version(ref)
    return version == 0 or (version is None and name in bundle.vectors)


def resolve(ref: str, bundle: Bundle, registry: Registry, store: Store) -> Resolved:
    """Registry names shadow nothing: a shipped name cannot be saved, so a plain name is one or the other."""
    model = bundle.spec.name
    if ref.startswith(EDIT_PREFIX):
        try:
            stored = store.get_edit(ref)
        except NotFoundError:
            raise VectorNotFoundError(model, ref) from None
        if stored.model != model:
            raise ModelMismatchError(f"edit {ref} belongs to model {stored.model!r}, not {model!r}")
        classes = [int(c) for c in stored.meta.get("classes", "").split(",") if c]
        vector = EditingVector(
            delta=torch.from_numpy(stored.array),
            model=model,
            classes=classes,
            region=stored.meta.get("region") or None,
        )
        return Resolved(vector, ref)
    name, version = _name_version(ref)
    if is_shipped(ref, bundle):
        return Resolved(bundle_vector(bundle, name), f"{name}@0")
    record = registry.get(model, name, version)
    return Resolved(record_vector(bundle, record), f"{name}@{record.version}")


def check_new_name(bundle: Bundle, name: str) -> None:
    """Refuse a name that a new registry version cannot take: one shipped inside the bundle (read-only), or
    one starting with `edv_`, which references read as an unsaved edit's id (such a vector could never be
    applied by name)."""
    if name in bundle.vectors:
        raise ReadOnlyVectorError(
            f"{name!r} is shipped with model {bundle.spec.name!r} and cannot be replaced; choose a new name"
        )
    if name.startswith(EDIT_PREFIX):
        raise InputError(f"vector names cannot start with {EDIT_PREFIX!r}: it marks an unsaved edit's id")


def save_vector(registry: Registry, bundle: Bundle, name: str, vector: EditingVector) -> int:
    """Store `vector` as a new version of `name` (see `check_new_name`)."""
    check_new_name(bundle, name)
    meta = {
        "classes": vector.classes,
        "region": vector.region,
        "description": vector.description,
        "scale_range": list(vector.scale_range),
        "created_at": vector.created_at,
    }
    return registry.save(bundle.spec.name, name, vector.delta.detach().cpu().numpy(), meta)
