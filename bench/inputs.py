"""The inputs every section edits, derived from the model itself so that any bundle can be measured:
a latent, its rendering as a photo, and a painted mask (what a user would paint)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from engine import Bundle, EditParams, InvertParams, RefineParams, render
from engine.images import fit_to_canvas, image_to_uint8


@dataclass
class EditInput:
    w: Tensor  # [1, L, S] the latent to edit
    photo: np.ndarray  # uint8 [h, w, 3] its rendering (the content box): the image to invert
    mask: np.ndarray  # uint8 [h, w] its segmentation with a rectangle painted in `painted`
    painted: int  # the class painted
    region: str | None  # the bundle's region holding that class (None: the classes the edit changes)
    region_classes: list[int]  # the classes of the region (or the painted class alone)


def latent(bundle: Bundle, seed: int = 0) -> Tensor:
    """A W+ [1, L, S]: the bundle's first example, else a truncated sample."""
    if bundle.examples is not None and bundle.examples.shape[0] > 0:
        return bundle.examples[:1].to(bundle.device)
    psi = float(bundle.spec.defaults.get("sample", {}).get("truncation", 0.7))
    with torch.no_grad():
        return bundle.generator.sample_w_plus(1, seed=seed, psi=psi)


def edit_input(bundle: Bundle, w: Tensor | None = None) -> EditInput:
    """Paint a rectangle (a sixth of the content box per side) of one class over the latent's segmentation.

    The class is the first of the bundle's region that covers the fewest pixels but some (a small edit of
    a named region, as a user would pick); a bundle without regions gets its rarest non-background class.
    """
    w = latent(bundle) if w is None else w
    shown = render(bundle, w)
    labels = shown.labels[0].cpu().numpy().astype(np.uint8)
    h, wd = labels.shape
    counts = np.bincount(labels.reshape(-1), minlength=len(bundle.spec.classes))
    # Refinement segments with its own interpolation (nearest, officially): count what both modes show.
    mode = RefineParams.resolve(bundle.spec.defaults.get("refine")).upsample
    refined = render(bundle, w, upsample=mode).labels[0].cpu().numpy().reshape(-1)
    counts = np.minimum(counts, np.bincount(refined, minlength=len(bundle.spec.classes)))
    region: str | None = None
    if bundle.spec.regions:
        # present classes first: refinement's region is where the vector's classes are, before or after
        area = {r: int(counts[ids].sum()) for r, ids in bundle.spec.regions.items()}
        region = min(area, key=lambda r: (area[r] == 0, area[r], r))
        classes = sorted(bundle.spec.regions[region])
        painted = classes[0]
    else:
        present = [c for c in range(1, len(counts)) if counts[c] > 0] or list(range(1, len(counts)))
        painted = min(present, key=lambda c: int(counts[c]))
        classes = [painted]
    rows, cols = np.nonzero(labels == painted)
    cy, cx = (int(rows.mean()), int(cols.mean())) if rows.size else (h // 2, wd // 2)
    dh, dw = max(2, h // 12), max(2, wd // 12)
    mask = labels.copy()
    mask[max(0, cy - dh) : cy + dh, max(0, cx - dw) : cx + dw] = painted
    if (mask == labels).all():  # the class already fills the rectangle: paint it elsewhere
        mask[: dh * 2, : dw * 2] = painted
    return EditInput(
        w=w,
        photo=image_to_uint8(shown.image)[0],
        mask=mask,
        painted=painted,
        region=region,
        region_classes=classes,
    )


def default_steps(bundle: Bundle, quick: bool) -> dict[str, int]:
    """The model's default updates per mode (bundle defaults over the official ones)."""
    d = bundle.spec.defaults
    steps = {
        "invert": InvertParams.resolve(d.get("invert")).steps,
        "optimize": EditParams.resolve(d.get("edit")).steps,
        "refine": RefineParams.resolve(d.get("refine")).steps,
    }
    return {k: max(1, min(v, 4)) for k, v in steps.items()} if quick else steps


def canvas(bundle: Bundle, photo: np.ndarray) -> Tensor:
    """The photo placed on the model's canvas as the gateway does: [1, 3, S, S] in [-1, 1]."""
    assert bundle.spec.geometry is not None
    return fit_to_canvas(Image.fromarray(photo), bundle.spec.geometry, "crop").to(bundle.device)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def npy(w: Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, w.detach().cpu().numpy().astype(np.float32))
    return buf.getvalue()
