"""Hand-made hostile uploads that tests/service/test_uploads.py and test_api_catalog.py do not already cover:
JPEG and WebP decompression bombs, corrupt data and EXIF, polyglots, and `.npy` files that lie about their
size or type, sent as latents and as vectors. Refused with a 4xx (never a 5xx), and nothing hostile is stored."""

from __future__ import annotations

import io
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine import Bundle, InputError
from engine.bundle import build_networks
from service.uploads import PayloadTooLargeError, UnsupportedMediaError, check_npy_header, decode_canvas
from tests.conftest import tiny_spec
from tests.live import Live
from workers.queue import fetch

MAX_PIXELS = 40_000_000
HTML = b"<html><script>alert(document.cookie)</script></html>"
ZIP = b"PK\x03\x04" + b"\x00" * 26 + HTML  # a zip local-file header: what a PNG+ZIP polyglot appends


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    spec = tiny_spec()
    generator, segmenter, encoder = build_networks(spec, empty=True)  # decoding reads only the spec
    return Bundle(spec=spec, generator=generator, segmenter=segmenter, encoder=encoder)


def encode(fmt: str, size: int = 16, **params: object) -> bytes:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode("JPEG"))
    sof = data.find(b"\xff\xc0")  # baseline frame header: length, precision, then height and width
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def webp_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode("WEBP", quality=80))
    assert data[12:16] == b"VP8 "
    key = data.find(b"\x9d\x01\x2a")  # lossy key frame start code, then 14-bit width and height
    struct.pack_into("<HH", data, key + 3, width, height)
    return bytes(data)


def webp_lossless_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode("WEBP", lossless=True))
    assert data[12:16] == b"VP8L"
    bits = struct.unpack_from("<I", data, 21)[0] & ~((1 << 28) - 1)  # keep alpha and version bits
    struct.pack_into("<I", data, 21, bits | (width - 1) | ((height - 1) << 14))
    return bytes(data)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)  # the attacker's side may pickle; the service must not load it
    return buf.getvalue()


def npy_claiming(shape: tuple[int, ...], payload: bytes = b"\x00" * 64) -> bytes:
    """A valid `.npy` header that claims `shape` float32, followed by far fewer bytes."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape!r}, }}".ljust(117) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload


# ---------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("claim", [jpeg_claiming, webp_claiming, webp_lossless_claiming])
@pytest.mark.parametrize(("side", "max_pixels"), [(16383, MAX_PIXELS), (100, 4096)])
def test_jpeg_and_webp_decompression_bombs_are_refused_on_the_header(
    bundle: Bundle, claim: object, side: int, max_pixels: int
) -> None:
    # 16383^2 passes Pillow's own bomb limit; 100^2 only ours (max_pixels): both refused before decoding.
    assert callable(claim)
    with pytest.raises(PayloadTooLargeError):
        decode_canvas(claim(side, side), bundle, "crop", max_pixels)


def test_corrupt_image_data_is_refused(bundle: Bundle) -> None:
    png = bytearray(encode("PNG"))
    png[png.find(b"IDAT") + 10] ^= 0xFF  # one flipped byte in the compressed pixels: the CRC no longer matches
    with pytest.raises(UnsupportedMediaError):
        decode_canvas(bytes(png), bundle, "crop", MAX_PIXELS)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's warning is the point: it warns, never fails
def test_corrupt_exif_does_not_break_decoding(bundle: Bundle) -> None:
    png = encode("PNG")
    exif = png_chunk(b"eXIf", b"MM\x00\x2a\x00\x00\x00\x08\xff\xff" + b"\x00" * 8)  # 65535 entries promised, none
    jpeg = encode("JPEG")
    app1 = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + b"\x01" * 20
    for data in (
        png[:33] + exif + png[33:],
        jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:],
    ):
        assert decode_canvas(data, bundle, "crop", MAX_PIXELS).shape == (32, 32, 3)


@pytest.mark.parametrize("prefix", [HTML, ZIP, b"GIF89a" + HTML])
def test_a_file_that_is_something_else_first_is_refused(bundle: Bundle, prefix: bytes) -> None:
    with pytest.raises(UnsupportedMediaError):
        decode_canvas(prefix + encode("PNG"), bundle, "crop", MAX_PIXELS)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_polyglot_image_decodes_as_its_image_only(bundle: Bundle, fmt: str) -> None:
    clean = encode(fmt)
    assert np.array_equal(
        decode_canvas(clean + ZIP, bundle, "crop", MAX_PIXELS), decode_canvas(clean, bundle, "crop", MAX_PIXELS)
    )


def test_a_polyglot_upload_is_stored_re_encoded_without_its_payload(live: Live) -> None:
    response = live.http.post("/invert", files={"image": ("x.png", encode("PNG") + ZIP, "image/png")})
    assert response.status_code == 202, response.text
    upload_id = fetch(live.redis, response.json()["job_id"]).args[0]["upload_id"]
    stored = live.redis.get(f"editgan:upload:{upload_id}")
    assert isinstance(stored, bytes) and stored.startswith(b"\x89PNG")
    assert b"<script>" not in stored and b"PK\x03\x04" not in stored


# ---------------------------------------------------------------------------------------------- .npy


@pytest.mark.parametrize("shape", [(100_000, 100_000), (2**40,), (8, 32)])
def test_check_npy_header_refuses_a_size_claim_the_file_does_not_hold(shape: tuple[int, ...]) -> None:
    with pytest.raises(InputError, match="claims"):
        check_npy_header(npy_claiming(shape), "latent")
    check_npy_header(npy(np.zeros((8, 32), np.float32)), "latent")  # the real thing passes
    check_npy_header(b"not an npy", "latent")  # other formats are left to the engine's own refusal


HOSTILE_NPY = {
    "pickle": pickle.dumps(np.zeros((8, 32), np.float32)),
    "object-dtype": npy(np.array([[object()] * 32] * 8, dtype=object)),
    "complex": npy(np.zeros((8, 32), np.complex64)),
    "strings": npy(np.full((8, 32), "a")),
    "structured": npy(np.zeros((8, 32), dtype=[("a", "<f4")])),
    "infinite": npy(np.full((8, 32), np.inf, np.float32)),
    "scalar": npy(np.array(1, np.float32)),
    "too-many-axes": npy(np.zeros((2, 8, 32), np.float32)),
    "huge-claim": npy_claiming((100_000, 100_000)),
    "bigger-claim": npy_claiming((2**40,)),
    "header-only": npy_claiming((8, 32), b""),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_NPY))
def test_hostile_npy_latents_and_vectors_get_a_4xx_and_nothing_is_stored(live: Live, name: str) -> None:
    data = HOSTILE_NPY[name]
    latent = live.http.post("/latents", files={"file": ("w.npy", data)})
    vector = live.http.post("/vectors", data={"name": f"hostile_{name}", "classes": "1"}, files={"file": data})
    for response in (latent, vector):
        assert response.status_code in (415, 422), response.text
        assert response.json()["code"] in ("invalid_input", "unsupported_media_type")
    assert live.http.get(f"/vectors/tiny/hostile_{name}").status_code == 404
