from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from engine.bundle import ClassInfo, Geometry
from engine.errors import InputError
from engine.images import fit_to_canvas, image_to_uint8, labels_from_colors, open_image

CAR = Geometry(64, top=8, left=0, height=48, width=64)  # the car layout, scaled down 8x


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
def test_images_land_in_the_content_box(fit: str) -> None:
    img = Image.new("RGB", (100, 30), (255, 255, 255))
    canvas = fit_to_canvas(img, CAR, fit)  # type: ignore[arg-type]
    assert canvas.shape == (1, 3, 64, 64)
    assert float(canvas[:, :, :8].max()) == -1.0 and float(canvas[:, :, 56:].max()) == -1.0  # black bands
    inside = canvas[:, :, 8:56]
    if fit == "pad":  # letterboxed: white stripe in the middle, black above and below it
        assert float(inside.min()) == -1.0 and float(inside.max()) == 1.0
    else:
        assert float(inside.min()) > 0.9


def test_transparency_becomes_black_and_exif_rotation_applies() -> None:
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert open_image(_png(rgba)).getpixel((0, 0)) == (0, 0, 0)
    img = Image.new("RGB", (20, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert open_image(buf.getvalue()).size == (10, 20)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPEG"])
def test_a_malformed_exif_block_is_ignored(fmt: str) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(buf, format=fmt, exif=b"garbage")  # not a TIFF structure
    img = open_image(buf.getvalue())
    assert img.size == (40, 30)
    assert np.abs(np.asarray(img, dtype=int) - [10, 20, 30]).max() <= 3  # JPEG rounds a little


def test_16_bit_grey_keeps_its_levels() -> None:
    wide = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    img = open_image(_png(Image.fromarray(wide)))
    grey = np.asarray(img)
    assert img.mode == "RGB" and np.array_equal(grey[..., 0], (wide >> 8).astype(np.uint8))
    assert np.array_equal(grey[..., 0], grey[..., 2])


def test_undecodable_images_are_input_errors() -> None:
    with pytest.raises(InputError, match="cannot decode"):
        open_image(b"not an image")
    with pytest.raises(InputError, match="cannot decode"):
        open_image(_png(Image.new("RGB", (50, 50)))[:60])


def test_uint8_conversion_is_the_official_rounding() -> None:
    x = torch.linspace(-1.2, 1.2, 97).reshape(1, 1, 1, 97).expand(1, 3, 1, 97)
    official = np.clip((x.numpy()[0] * 127.5 + 128).astype(np.int64), 0, 255)  # process_image: x*127.5+128, trunc
    assert np.array_equal(image_to_uint8(x)[0].transpose(2, 0, 1), official)


def test_colour_masks_refuse_unknown_colours() -> None:
    classes = [ClassInfo(0, "bg", "#ffffff"), ClassInfo(1, "a", "#ff0000"), ClassInfo(2, "b", "#00ff00")]
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[:] = (255, 255, 255)
    rgb[0, 1] = (255, 0, 0)
    rgb[1, 2] = (0, 255, 0)
    assert labels_from_colors(rgb, classes).tolist() == [[0, 1, 0], [0, 0, 2]]
    rgb[1, 1] = (1, 2, 3)
    with pytest.raises(InputError, match="#010203"):
        labels_from_colors(rgb, classes)
