"""Conversions at the engine's edges: float tensors in [-1, 1] <-> uint8 pixels, label palettes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from engine.bundle import ClassInfo
from engine.errors import InputError


def image_to_uint8(image: Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]; round((x + 1) * 127.5), clipped (official rounding)."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise InputError(f"image must be [N, 3, H, W], got {list(image.shape)}")
    x = ((image.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255)
    return x.permute(0, 2, 3, 1).to(torch.uint8).numpy()


def palette_array(classes: Sequence[ClassInfo]) -> np.ndarray:
    """[K, 3] uint8 colours indexed by class id."""
    return np.array([c.rgb for c in classes], dtype=np.uint8)


def colorize(labels: Tensor | np.ndarray, classes: Sequence[ClassInfo]) -> np.ndarray:
    """Label map [..., H, W] -> RGB [..., H, W, 3] in the model's palette."""
    array = labels.cpu().numpy() if isinstance(labels, Tensor) else labels
    if array.size and (array.min() < 0 or array.max() >= len(classes)):
        raise InputError(f"labels must lie in [0, {len(classes)})")
    out: np.ndarray = palette_array(classes)[array]
    return out


def uncertainty_to_uint8(uncertainty: Tensor, *, max_value: float | None = None) -> np.ndarray:
    """Disagreement map [..., H, W] -> uint8 grey levels: 0 = agreement, 255 = `max_value` (default: max)."""
    u = uncertainty.detach().float().cpu().clamp(min=0)
    top = max_value if max_value is not None else max(float(u.max()), 1e-6)
    out: np.ndarray = (u / top * 255).round().clamp(0, 255).numpy().astype(np.uint8)
    return out


def save_png(array: np.ndarray, path: Path) -> None:
    """uint8 [H, W] (grey or labels) or [H, W, 3] (RGB) -> PNG file."""
    Image.fromarray(array).save(path, format="PNG")
