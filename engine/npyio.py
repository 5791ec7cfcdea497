"""Safe `.npy` reading and writing for latents and editing vectors (never unpickles anything)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from engine.errors import InputError

MAX_NPY_BYTES = 64 << 20  # far above any W+ array (16 x 512 float32 is 32 KiB); refuse larger files unread


def read_npy(source: bytes | Path, *, what: str = "array") -> np.ndarray:
    """Parse `.npy` bytes or a file with `allow_pickle=False`; object arrays and pickles are refused."""
    data = source.read_bytes() if isinstance(source, Path) else source
    if len(data) > MAX_NPY_BYTES:
        raise InputError(f"{what}: .npy is {len(data)} bytes, more than the {MAX_NPY_BYTES} allowed")
    if not data.startswith(b"\x93NUMPY"):
        raise InputError(f"{what}: not a .npy file (pickles and other formats are refused)")
    buf = io.BytesIO(data)
    try:
        array = np.load(buf, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{what}: unreadable .npy ({exc})") from exc
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        raise InputError(f"{what}: expected a floating-point array, got dtype {getattr(array, 'dtype', '?')}")
    if buf.tell() != len(data):  # e.g. two files concatenated, or an upload with something appended
        raise InputError(f"{what}: {len(data) - buf.tell()} bytes follow the array in the .npy file")
    return array


def read_w_plus(source: bytes | Path, n_latent: int, style_dim: int, *, what: str = "latent") -> Tensor:
    """A W+ array, (L, S) or (1, L, S) as the official files store them, as float32 [L, S]."""
    array = read_npy(source, what=what)
    if array.shape == (1, n_latent, style_dim):
        array = array[0]
    if array.shape != (n_latent, style_dim):
        raise InputError(
            f"{what}: shape {array.shape} does not fit this model; expected ({n_latent}, {style_dim}) "
            f"or (1, {n_latent}, {style_dim})"
        )
    with np.errstate(over="ignore"):  # checked after the cast, where 1e300 has become inf
        as_float32 = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(as_float32).all():
        raise InputError(f"{what}: contains NaN or infinite values, or values beyond float32's range")
    return torch.from_numpy(as_float32)


def write_npy(tensor: Tensor, *, batch_axis: bool = False) -> bytes:
    """float32 `.npy` bytes; `batch_axis=True` adds the leading 1 of the official vector files."""
    array = tensor.detach().to("cpu", torch.float32).numpy()
    if batch_axis:
        array = array[None]
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()
