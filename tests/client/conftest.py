"""The client against the session's live service (tests/live.py): real HTTP, a real worker, a real Redis."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from client import EditganClient
from tests.live import Live


@pytest.fixture
def api(live: Live) -> Iterator[EditganClient]:
    with EditganClient(live.base_url, timeout=30) as client:
        yield client


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def photo(seed: int = 0, size: tuple[int, int] = (40, 50)) -> bytes:
    return png(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    array: np.ndarray = np.load(io.BytesIO(data), allow_pickle=False)
    return array


def load_png(data: bytes) -> np.ndarray:
    assert data.startswith(b"\x89PNG")
    return np.asarray(Image.open(io.BytesIO(data)))
