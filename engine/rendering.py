"""One generator pass plus segmentation: what every edit shows the user."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.bundle import Bundle
from engine.errors import InputError
from engine.segmenter import Upsample


@dataclass
class Rendering:
    """A rendered W+ batch, cropped to the bundle's content box."""

    image: Tensor  # [N, 3, h, w] in [-1, 1]
    labels: Tensor  # [N, h, w] class ids
    uncertainty: Tensor | None  # [N, h, w] ensemble disagreement (>= 0 up to rounding); None: not asked for


def display_upsample(bundle: Bundle) -> Upsample:
    """How the segmentation shown to the user interpolates the feature maps (`defaults.segment.upsample`)."""
    mode: Upsample = bundle.spec.defaults.get("segment", {}).get("upsample", "bilinear")
    return mode


@torch.no_grad()
def render(
    bundle: Bundle,
    w_plus: Tensor,
    *,
    upsample: Upsample | None = None,
    members: int | None = None,
    uncertainty: bool = True,
) -> Rendering:
    """Render W+ [N, L, S] (or [L, S]) and segment it, on the bundle's device: by the whole ensemble, or
    by its first `members` classifiers (a preview: the same image, labels at a fraction of the cost). With
    `uncertainty=False` the disagreement map is skipped (None), 4-9 % of a render on a CPU."""
    if w_plus.ndim == 2:
        w_plus = w_plus.unsqueeze(0)
    shape = (bundle.spec.n_latent, bundle.spec.generator.style_dim)
    if w_plus.ndim != 3 or tuple(w_plus.shape[1:]) != shape:
        raise InputError(f"W+ must be [N, {shape[0]}, {shape[1]}], got {list(w_plus.shape)}")
    assert bundle.spec.geometry is not None
    top, left, height, width = bundle.spec.geometry.box
    mode = upsample or display_upsample(bundle)
    out = bundle.generator.synthesis(w_plus.to(bundle.device), return_features=True)
    assert out.features is not None
    box = (top, left, height, width)
    seg = bundle.segmenter.segment(out.features, box=box, mode=mode, members=members, uncertainty=uncertainty)
    image = out.image[:, :, top : top + height, left : left + width]
    return Rendering(image=image, labels=seg.labels, uncertainty=seg.uncertainty)
