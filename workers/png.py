"""uint8 arrays -> PNG bytes: the standard library's zlib in the PNG container (PNG spec, sections 5-11).

Every result stores its outputs as PNGs in the request's path (four for a vector edit). Pillow took 0.38 ms
for a 64 px RGB rendering at compression level 1 and about 0.07 ms for a small grey map, mostly per-call
set-up and per-row adaptive filtering rather than compression; this writer takes 0.17 and 0.02 ms for the
same pixels (files within 10 % of Pillow's size). Decoding stays with Pillow.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
GREY, RGB = 0, 2  # IHDR colour types
FILTER_NONE, FILTER_UP = 0, 2  # per-scanline filter types
LEVEL = 1  # zlib level: the images are small or transient, speed matters more than the last bytes


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def png_bytes(array: np.ndarray) -> bytes:
    """uint8 [H, W] (grey) or [H, W, 3] (RGB) -> PNG (8 bits per sample, no interlace).

    RGB renderings are filtered with "up" (each byte minus the one above it), which shrinks smooth images by
    about a quarter; grey maps (labels, uncertainty) are flat regions that zlib compresses best unfiltered.
    """
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"expected uint8 [H, W] or [H, W, 3], got {array.dtype} {list(array.shape)}")
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ValueError("a PNG needs at least one pixel")
    rgb = array.ndim == 3
    rows = np.ascontiguousarray(array).reshape(height, -1)
    scanlines = np.empty((height, rows.shape[1] + 1), np.uint8)
    scanlines[:, 0] = FILTER_UP if rgb else FILTER_NONE
    scanlines[:, 1:] = rows
    if rgb:
        np.subtract(rows[1:], rows[:-1], out=scanlines[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG says
    header = struct.pack(">IIBBBBB", width, height, 8, RGB if rgb else GREY, 0, 0, 0)
    return (
        SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(scanlines.data, LEVEL))
        + _chunk(b"IEND", b"")
    )
