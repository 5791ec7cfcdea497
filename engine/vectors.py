"""Editing vectors: a W+ offset plus what a registry needs to know about it, and the official formats.

Official formats read and written here:
- `.npy`, float32 (1, L, S), as `static/editing_vectors/*.npy` (also accepted: (L, S));
- the tool's `{"edit_vector": (L, S) float32, "roi_ids": [class ids]}` pickle, parsed without unpickling.
Scale convention: `w' = w + scale * delta`. The official UI shows a slider value and its HTTP layer
halves it (`scale = slider / 2`); `official_ui_scale` converts when a client wants that convention.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from torch import Tensor

from engine.bundle import BundleSpec
from engine.errors import InputError
from engine.npyio import read_w_plus, write_npy
from engine.official_pickle import parse_pickled_vector


def official_ui_scale(slider: float) -> float:
    """The official web tool's slider value -> the scale applied to the vector (its routes halve it)."""
    return slider / 2.0


@dataclass
class EditingVector:
    """A reusable edit: `delta` [L, S] added to any W+ at a chosen scale."""

    delta: Tensor  # [L, S] float32
    model: str  # the bundle it belongs to
    classes: list[int]  # the class group it edits (Q_edit); refinement's region
    region: str | None = None  # the bundle's region name for `classes`, when it has one
    description: str = ""
    scale_range: tuple[float, float] = (-2.0, 2.0)  # recommended slider range
    source_latent: Tensor | None = None  # [L, S] the W+ the edit started from
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def check(self, spec: BundleSpec, *, values: bool = True) -> EditingVector:
        """Raise unless the vector fits `spec` (model, shape, class ids, and with `values` finite values);
        returns self. Without `values` the caller checks what it computes from the vector instead."""
        shape = (spec.n_latent, spec.generator.style_dim)
        if self.model != spec.name:
            raise InputError(f"vector belongs to model {self.model!r}, not {spec.name!r}")
        if tuple(self.delta.shape) != shape or (values and not bool(torch.isfinite(self.delta).all())):
            raise InputError(f"vector must be a finite [{shape[0]}, {shape[1]}] array, got {list(self.delta.shape)}")
        if self.source_latent is not None and tuple(self.source_latent.shape) != shape:
            raise InputError(f"source latent must be [{shape[0]}, {shape[1]}]")
        if any(not 0 <= c < len(spec.classes) for c in self.classes):
            raise InputError(f"vector classes {self.classes} are not all in [0, {len(spec.classes)})")
        if self.region is not None and self.region not in spec.regions:
            raise InputError(f"unknown region {self.region!r}; the model has {sorted(spec.regions)}")
        lo, hi = self.scale_range
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise InputError(f"scale_range must be finite and increasing, got {self.scale_range}")
        return self

    def metadata(self) -> dict[str, Any]:
        """JSON-friendly description (no tensors)."""
        return {
            "model": self.model,
            "classes": list(self.classes),
            "region": self.region,
            "description": self.description,
            "scale_range": list(self.scale_range),
            "created_at": self.created_at,
            "has_source_latent": self.source_latent is not None,
            "norm": round(float(self.delta.double().norm()), 6),  # float64: in float32 a huge vector's is inf
        }

    # ------------------------------------------------------------------ official formats

    def to_npy(self) -> bytes:
        """The official `.npy`: float32 (1, L, S)."""
        return write_npy(self.delta, batch_axis=True)

    def to_official_pickle(self) -> bytes:
        """The official tool's cache file: a pickled `{edit_vector, roi_ids}` dict (safe to write), readable
        by its NumPy 1.21 as by NumPy 2.

        NumPy 2 pickles arrays through `numpy._core.multiarray._reconstruct`, a module NumPy 1.x lacks; NumPy 2
        still answers to the old name `numpy.core.multiarray`. Protocol 3 names globals as plain text lines,
        so the old name goes in place of the new without any length field to fix."""
        content = {"edit_vector": self.delta.detach().cpu().numpy().astype(np.float32), "roi_ids": list(self.classes)}
        data = pickle.dumps(content, protocol=3)
        new, old = b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n"
        if data.count(new) == 1:
            data = data.replace(new, old)
        assert data.count(old) == 1, "unexpected pickle layout for a NumPy array"
        return data

    @classmethod
    def from_npy(
        cls, data: bytes, spec: BundleSpec, *, region: str | None = None, classes: list[int] | None = None, **meta: Any
    ) -> EditingVector:
        """An official `.npy` vector; its class group comes from `region` (a bundle region) or `classes`."""
        delta = read_w_plus(data, spec.n_latent, spec.generator.style_dim, what="vector")
        return cls(delta=delta, model=spec.name, classes=_classes(spec, region, classes), region=region, **meta).check(
            spec
        )

    @classmethod
    def from_official_pickle(cls, data: bytes, spec: BundleSpec, **meta: Any) -> EditingVector:
        """The official tool's `{edit_vector, roi_ids}` pickle, decoded without unpickling."""
        content = parse_pickled_vector(data)
        array = content["edit_vector"]
        shape = (spec.n_latent, spec.generator.style_dim)
        if array.shape == (1, *shape):
            array = array[0]
        if array.shape != shape:
            raise InputError(f"edit_vector has shape {array.shape}, this model needs {shape}")
        delta = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        return cls(delta=delta, model=spec.name, classes=sorted(set(content["roi_ids"])), **meta).check(spec)


def _classes(spec: BundleSpec, region: str | None, classes: list[int] | None) -> list[int]:
    if region is not None:
        if region not in spec.regions:
            raise InputError(f"unknown region {region!r}; the model has {sorted(spec.regions)}")
        return sorted(set(spec.regions[region]) | set(classes or []))
    return sorted(set(classes or []))


def combine(terms: list[tuple[Tensor, float]]) -> Tensor:
    """sum_i scale_i * delta_i for deltas [L, S]: the single offset several vectors add up to."""
    if not terms:
        raise InputError("at least one (vector, scale) pair is needed")
    for _, scale in terms:
        if not np.isfinite(scale) or abs(scale) > 100:
            raise InputError(f"scale must be finite with |scale| <= 100, got {scale}")
    total = terms[0][0] * float(terms[0][1])
    for delta, scale in terms[1:]:
        total.add_(delta, alpha=float(scale))
    return total
