"""The PNG writer: every file decodes (by Pillow, which checks the chunk CRCs) to exactly the array written."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from workers.png import png_bytes


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(img)


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour regions with a little grain, like a rendering: coarse noise upsampled, plus noise."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).resize(
        (width, height), Image.BICUBIC
    )
    grain = rng.integers(-3, 4, size=(height, width, 3))
    return np.clip(np.asarray(coarse).astype(np.int64) + grain, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 9), (7, 1), (13, 7), (64, 64), (1, 1, 3), (1, 5, 3), (9, 1, 3), (13, 7, 3)]
)
def test_random_arrays_round_trip(shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    decoded = decode(png_bytes(array))
    assert decoded.shape == array.shape and decoded.dtype == np.uint8
    assert np.array_equal(decoded, array)


def test_up_filter_wraps_like_the_spec() -> None:
    """Rows that go down by more than they went up: the filtered bytes must wrap modulo 256, not saturate."""
    array = np.zeros((4, 6, 3), np.uint8)
    array[0], array[1], array[2], array[3] = 250, 3, 255, 0
    assert np.array_equal(decode(png_bytes(array)), array)


def test_sizes_stay_close_to_pillows() -> None:
    """The writer trades no size for speed on what results hold: smooth renderings and flat label maps."""
    labels = np.zeros((64, 64), np.uint8)
    labels[10:40, 20:50], labels[30:60, 5:25] = 3, 7
    for array in (photo_like(64, 64), labels):
        ours, pillows = png_bytes(array), io.BytesIO()
        Image.fromarray(array).save(pillows, format="PNG", compress_level=1)
        assert np.array_equal(decode(ours), array)
        assert len(ours) <= 1.25 * len(pillows.getvalue()), (array.ndim, len(ours), len(pillows.getvalue()))


def test_chunks_are_well_formed() -> None:
    data = png_bytes(photo_like(5, 4))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        kinds.append(kind)
        pos += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", data[16:29]) == (4, 5, 8, 2, 0, 0, 0)  # width, height, depth 8, RGB


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4), np.float32),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4,), np.uint8),
        np.zeros((0, 4), np.uint8),
    ],
)
def test_refuses_what_it_cannot_write(array: np.ndarray) -> None:
    with pytest.raises(ValueError):
        png_bytes(array)
