"""Upload decoding: allowed formats only, pixel limits checked on the header, masks by id or by palette colour."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from fastapi import UploadFile
from PIL import Image

from engine import Bundle, InputError
from engine.bundle import build_networks
from engine.images import colorize, palette_array
from service.uploads import (
    CHUNK,
    PayloadTooLargeError,
    UnsupportedMediaError,
    decode_canvas,
    decode_mask,
    read_limited,
)
from tests.conftest import tiny_spec

MAX_PIXELS = 40_000_000  # the settings' default


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    """conftest's tiny model, built once for the module: decoding reads only the spec (geometry, classes)."""
    spec = tiny_spec()
    generator, segmenter, encoder = build_networks(spec, empty=True)  # weights are never read here
    return Bundle(spec=spec, generator=generator, segmenter=segmenter, encoder=encoder)


def test_the_module_bundle_is_conftests_tiny_model(bundle: Bundle, tiny_bundle: Bundle) -> None:
    assert bundle.spec.to_json() == tiny_bundle.spec.to_json()


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def photo(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    """A smooth, bright RGB picture (no channel near black), so content and black borders are told apart."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    base = rng.integers(120, 200, 3)
    rgb = np.stack([base[0] + 40 * x / width, base[1] + 40 * y / height, base[2] + 20 * (x + y) / (width + height)])
    return Image.fromarray(rgb.transpose(1, 2, 0).astype(np.uint8))


def box(bundle: Bundle) -> tuple[int, int, int, int]:
    assert bundle.spec.geometry is not None
    return bundle.spec.geometry.box


def outside_box(bundle: Bundle, canvas: np.ndarray) -> np.ndarray:
    top, left, h, w = box(bundle)
    keep = np.ones(canvas.shape[:2], dtype=bool)
    keep[top : top + h, left : left + w] = False
    out: np.ndarray = canvas[keep]
    return out


def inside_box(bundle: Bundle, canvas: np.ndarray) -> np.ndarray:
    top, left, h, w = box(bundle)
    out: np.ndarray = canvas[top : top + h, left : left + w]
    return out


def with_header_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG with its IHDR claiming another size (valid CRC): a decompression bomb's header."""
    data = bytearray(png)
    assert data[12:16] == b"IHDR"
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def mask_shape(bundle: Bundle) -> tuple[int, int]:
    _, _, h, w = box(bundle)
    return h, w


def random_labels(bundle: Bundle, seed: int = 0) -> np.ndarray:
    labels: np.ndarray = np.random.default_rng(seed).integers(0, len(bundle.spec.classes), mask_shape(bundle))
    labels.reshape(-1)[: len(bundle.spec.classes)] = np.arange(len(bundle.spec.classes))  # every class present
    return labels.astype(np.uint8)


# ---------------------------------------------------------------------------------------------- decode_canvas


@pytest.mark.parametrize(
    ("fmt", "params", "tolerance"),
    [("PNG", {}, 1), ("JPEG", {"quality": 95}, 12), ("WEBP", {"quality": 95}, 12), ("WEBP", {"lossless": True}, 1)],
)
def test_allowed_formats_give_the_canvas_with_black_outside_the_box(
    bundle: Bundle, fmt: str, params: dict[str, object], tolerance: int
) -> None:
    img = photo()
    canvas = decode_canvas(encode(img, fmt, **params), bundle, "stretch", MAX_PIXELS)
    size = bundle.spec.resolution
    assert canvas.shape == (size, size, 3) and canvas.dtype == np.uint8
    assert not outside_box(bundle, canvas).any()  # exactly black
    content = inside_box(bundle, canvas)
    _, _, h, w = box(bundle)
    expected = np.asarray(img.resize((w, h), Image.Resampling.LANCZOS))  # what "stretch" does to the pixels
    assert np.abs(content.astype(int) - expected.astype(int)).max() <= tolerance


def test_lossless_formats_decode_identically(bundle: Bundle) -> None:
    img = photo(57, 23, seed=3)
    for fit in ("crop", "pad", "stretch"):
        png = decode_canvas(encode(img, "PNG"), bundle, fit, MAX_PIXELS)
        webp = decode_canvas(encode(img, "WEBP", lossless=True), bundle, fit, MAX_PIXELS)
        assert np.array_equal(png, webp)


@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
@pytest.mark.parametrize("size", [(40, 30), (8, 64), (64, 8), (500, 300)])
def test_every_fit_keeps_the_outside_of_the_box_black(bundle: Bundle, fit: str, size: tuple[int, int]) -> None:
    canvas = decode_canvas(encode(photo(*size), "PNG"), bundle, fit, MAX_PIXELS)
    assert not outside_box(bundle, canvas).any()
    content = inside_box(bundle, canvas)
    lit = content.max(axis=2) > 60  # the photo has no dark pixels: anything dark inside the box is padding
    if fit == "pad":
        assert lit.any()
    else:
        assert lit.all()  # crop and stretch fill the whole box


def test_pad_letterboxes_a_wide_picture_inside_the_box(bundle: Bundle) -> None:
    content = inside_box(bundle, decode_canvas(encode(photo(64, 8), "PNG"), bundle, "pad", MAX_PIXELS))
    lit_rows = np.flatnonzero(content.max(axis=(1, 2)) > 60)
    assert 0 < len(lit_rows) < content.shape[0]
    assert lit_rows.min() > 0 and lit_rows.max() < content.shape[0] - 1  # black bands above and below


def test_an_unknown_fit_is_refused(bundle: Bundle) -> None:
    with pytest.raises(InputError):
        decode_canvas(encode(photo(), "PNG"), bundle, "zoom", MAX_PIXELS)


def test_transparency_becomes_black(bundle: Bundle) -> None:
    transparent = Image.new("RGBA", (40, 30), (255, 255, 255, 0))
    black = Image.new("RGB", (40, 30), (0, 0, 0))
    a = decode_canvas(encode(transparent, "PNG"), bundle, "stretch", MAX_PIXELS)
    b = decode_canvas(encode(black, "PNG"), bundle, "stretch", MAX_PIXELS)
    assert np.array_equal(a, b)


def test_exif_orientation_is_applied(bundle: Bundle) -> None:
    img = photo(40, 24, seed=1)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    tagged = decode_canvas(encode(img, "PNG", exif=exif), bundle, "stretch", MAX_PIXELS)
    rotated = decode_canvas(encode(img.transpose(Image.Transpose.ROTATE_270), "PNG"), bundle, "stretch", MAX_PIXELS)
    plain = decode_canvas(encode(img, "PNG"), bundle, "stretch", MAX_PIXELS)
    assert np.array_equal(tagged, rotated)
    assert not np.array_equal(tagged, plain)


def _gif() -> bytes:
    return encode(photo().convert("P"), "GIF")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_gif(), id="gif"),
        pytest.param(encode(photo(), "BMP"), id="bmp"),
        pytest.param(encode(photo(), "TIFF"), id="tiff"),
        pytest.param(encode(photo(), "ICO"), id="ico"),
        pytest.param(encode(photo(), "PPM"), id="ppm"),
        pytest.param(np.random.default_rng(0).bytes(4096), id="random"),
        pytest.param(b"\x89PNG\r\n\x1a\n", id="png-signature-only"),
        pytest.param(b"<svg xmlns='http://www.w3.org/2000/svg'/>", id="svg"),
        pytest.param(b"\x00", id="one-byte"),
    ],
)
def test_other_formats_and_garbage_are_unsupported(bundle: Bundle, data: bytes) -> None:
    with pytest.raises(UnsupportedMediaError):
        decode_canvas(data, bundle, "crop", MAX_PIXELS)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_truncated_image_is_refused(bundle: Bundle, fmt: str) -> None:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = encode(noise, fmt)
    decode_canvas(data, bundle, "crop", MAX_PIXELS)  # whole, it decodes
    with pytest.raises(UnsupportedMediaError):
        decode_canvas(data[: len(data) * 3 // 5], bundle, "crop", MAX_PIXELS)


@pytest.mark.parametrize("max_pixels", [MAX_PIXELS, 4096, 10**12])
def test_a_decompression_bomb_header_is_refused_as_too_large(bundle: Bundle, max_pixels: int) -> None:
    bomb = with_header_size(encode(Image.new("L", (1, 1)), "PNG"), 30_000, 30_000)
    assert len(bomb) < 100  # the claim, not the payload, is what is large
    with pytest.raises(PayloadTooLargeError):
        decode_canvas(bomb, bundle, "crop", max_pixels)
    with pytest.raises(PayloadTooLargeError):
        decode_mask(bomb, bundle)


def test_the_pixel_limit_is_checked_on_the_header_before_decoding(bundle: Bundle) -> None:
    # The header claims 300x300 but the data holds one pixel: decoding it would fail as corrupt. Over the
    # limit it is refused as too large (so nothing was decoded); at the limit it gets as far as decoding.
    claim = with_header_size(encode(Image.new("RGB", (1, 1)), "PNG"), 300, 300)
    with pytest.raises(PayloadTooLargeError):
        decode_canvas(claim, bundle, "crop", 300 * 300 - 1)
    with pytest.raises(UnsupportedMediaError):
        decode_canvas(claim, bundle, "crop", 300 * 300)


def test_the_pixel_limit_is_inclusive(bundle: Bundle) -> None:
    data = encode(photo(40, 30), "JPEG")
    assert decode_canvas(data, bundle, "crop", 40 * 30).shape[-1] == 3
    with pytest.raises(PayloadTooLargeError):
        decode_canvas(data, bundle, "crop", 40 * 30 - 1)


# ---------------------------------------------------------------------------------------------- decode_mask


def test_a_grey_label_png_round_trips(bundle: Bundle) -> None:
    labels = random_labels(bundle)
    decoded = decode_mask(encode(Image.fromarray(labels, mode="L"), "PNG"), bundle)
    assert decoded.dtype == np.uint8
    assert np.array_equal(decoded, labels)


def test_a_16_bit_label_png_round_trips(bundle: Bundle) -> None:
    labels = random_labels(bundle, seed=1)
    decoded = decode_mask(encode(Image.fromarray(labels.astype(np.uint16)), "PNG"), bundle)
    assert np.array_equal(decoded, labels)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_colourised_mask_decodes_to_the_same_ids(bundle: Bundle, mode: str) -> None:
    labels = random_labels(bundle, seed=2)
    rgb = colorize(labels, bundle.spec.classes)
    decoded = decode_mask(encode(Image.fromarray(rgb).convert(mode), "PNG"), bundle)
    assert np.array_equal(decoded, labels)


def test_an_unknown_colour_is_refused_not_made_background(bundle: Bundle) -> None:
    labels = random_labels(bundle, seed=3)
    rgb = colorize(labels, bundle.spec.classes).copy()
    palette = {tuple(c) for c in palette_array(bundle.spec.classes).tolist()}
    stray = (1, 2, 3)
    assert stray not in palette
    rgb[5, 7] = stray
    with pytest.raises(InputError, match="palette"):
        decode_mask(encode(Image.fromarray(rgb), "PNG"), bundle)


def test_a_palette_png_in_the_models_colours_decodes_by_colour(bundle: Bundle) -> None:
    k = len(bundle.spec.classes)
    order = np.roll(np.arange(k), 2)  # palette entry j holds class order[j]'s colour: indices are not ids
    indices = np.random.default_rng(4).integers(0, k, mask_shape(bundle)).astype(np.uint8)
    img = Image.fromarray(indices, mode="P")
    img.putpalette(palette_array(bundle.spec.classes)[order].reshape(-1).tolist())
    decoded = decode_mask(encode(img, "PNG"), bundle)
    assert np.array_equal(decoded, order[indices])
    assert not np.array_equal(decoded, indices)


def test_a_palette_png_in_the_models_colours_with_a_stray_entry_is_refused(bundle: Bundle) -> None:
    # Mostly the model's colours in the file's own order, one entry changed: reading the indices as class
    # ids would silently give other classes; as RGB the same picture is refused, and so is it here.
    k = len(bundle.spec.classes)
    order = np.roll(np.arange(k), 1)
    colours = palette_array(bundle.spec.classes)[order].copy()
    colours[0] = (0xFA, 0xC8, 0x96)
    assert (0xFA, 0xC8, 0x96) not in {c.rgb for c in bundle.spec.classes}
    img = Image.fromarray(np.resize(np.arange(k, dtype=np.uint8), mask_shape(bundle)), mode="P")  # every entry used
    img.putpalette(colours.reshape(-1).tolist())
    with pytest.raises(InputError, match="#fac896"):
        decode_mask(encode(img, "PNG"), bundle)


def test_a_palette_png_in_other_colours_decodes_by_index(bundle: Bundle) -> None:
    labels = random_labels(bundle, seed=5)
    img = Image.fromarray(labels, mode="P")
    img.putpalette([v for i in range(256) for v in (i, i, 255 - i)])  # no model colour among them
    assert np.array_equal(decode_mask(encode(img, "PNG"), bundle), labels)


@pytest.mark.parametrize("mode", ["L", "RGB", "P"])
@pytest.mark.parametrize("shape_change", [(1, 0), (0, -1), (8, 0)])  # (8, 0): the whole canvas, not the box
def test_a_mask_of_the_wrong_size_is_refused(bundle: Bundle, mode: str, shape_change: tuple[int, int]) -> None:
    h, w = mask_shape(bundle)
    labels = np.zeros((h + shape_change[0], w + shape_change[1]), dtype=np.uint8)
    if mode == "RGB":
        img = Image.fromarray(colorize(labels, bundle.spec.classes))
    else:
        img = Image.fromarray(labels, mode="L")
        if mode == "P":
            img = img.convert("P")
            img.putpalette(palette_array(bundle.spec.classes).reshape(-1).tolist())
    with pytest.raises(InputError):
        decode_mask(encode(img, "PNG"), bundle)


def test_class_ids_beyond_the_model_are_refused(bundle: Bundle) -> None:
    labels = random_labels(bundle, seed=6)
    labels[3, 3] = len(bundle.spec.classes)
    with pytest.raises(InputError):
        decode_mask(encode(Image.fromarray(labels, mode="L"), "PNG"), bundle)
    wide = labels.astype(np.uint16)
    wide[3, 3] = 300
    with pytest.raises(InputError):
        decode_mask(encode(Image.fromarray(wide), "PNG"), bundle)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_a_mask_in_another_format_is_refused(bundle: Bundle, fmt: str) -> None:
    img = Image.fromarray(random_labels(bundle), mode="L")
    with pytest.raises(UnsupportedMediaError):
        decode_mask(encode(img, fmt), bundle)


@pytest.mark.parametrize("mode", ["LA", "1", "CMYK"])
def test_a_mask_in_a_mode_without_ids_or_colours_is_refused(bundle: Bundle, mode: str) -> None:
    h, w = mask_shape(bundle)
    img = Image.new(mode, (w, h))
    if img.mode == "CMYK":  # PNG cannot hold CMYK; a TIFF is refused for its format instead
        with pytest.raises(UnsupportedMediaError):
            decode_mask(encode(img, "TIFF"), bundle)
        return
    with pytest.raises(UnsupportedMediaError):
        decode_mask(encode(img, "PNG"), bundle)


def test_a_mask_far_larger_than_the_model_is_refused_as_too_large(bundle: Bundle) -> None:
    big = bundle.spec.resolution * 3
    with pytest.raises(PayloadTooLargeError):
        decode_mask(encode(Image.new("L", (big, big)), "PNG"), bundle)


# ---------------------------------------------------------------------------------------------- read_limited


def upload(data: bytes) -> tuple[UploadFile, io.BytesIO]:
    stream = io.BytesIO(data)
    return UploadFile(stream, filename="upload.bin"), stream


@pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
def test_read_limited_returns_the_bytes_up_to_the_limit(size: int) -> None:
    data = np.random.default_rng(size).bytes(size)
    assert read_limited(upload(data)[0], size, "image") == data  # exactly at the limit is allowed
    assert read_limited(upload(data)[0], 10 * CHUNK, "image") == data


@pytest.mark.parametrize(("size", "limit"), [(2, 1), (CHUNK + 1, CHUNK), (10 * CHUNK, 2 * CHUNK + 3)])
def test_read_limited_refuses_more_than_the_limit_without_reading_it_all(size: int, limit: int) -> None:
    file, stream = upload(bytes(size))
    with pytest.raises(PayloadTooLargeError, match="image"):
        read_limited(file, limit, "image")
    assert stream.tell() <= limit + CHUNK  # stopped within a chunk of the limit
    if size > limit + CHUNK:
        assert stream.tell() < size


def test_read_limited_refuses_an_empty_upload() -> None:
    with pytest.raises(InputError, match="mask"):
        read_limited(upload(b"")[0], 1024, "mask")
