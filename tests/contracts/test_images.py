"""Upload decoding: real photos, every image mode, orientation, and the hostile cases."""

from __future__ import annotations

import csv
import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from contracts.images import (
    ImageRejected,
    decode_image,
    eval_resize,
    prepare_image,
    read_image,
    sniff_format,
)

MAX = 40_000_000


def png_bytes(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand: for 16-bit RGB and for headers that lie about the size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def lesions(real_lesions_dir: Path) -> list[tuple[Path, str]]:
    with open(real_lesions_dir / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 28
    return [(real_lesions_dir / f"{r['image_id']}.jpg", r["sha256"]) for r in rows]


def test_real_photos_decode_with_their_hash(lesions: list[tuple[Path, str]]) -> None:
    for path, sha in lesions:
        decoded = decode_image(path.read_bytes(), MAX)
        assert decoded.sha256 == sha
        assert decoded.rgb.shape == (450, 600, 3) and decoded.rgb.dtype == np.uint8
        assert (decoded.format, decoded.width, decoded.height) == ("jpeg", 600, 450)


@pytest.mark.parametrize("size", [(224, 224), (112, 150), (600, 800)])
def test_prepare_image_is_eval_resize_of_the_data_set_decode(
    lesions: list[tuple[Path, str]], size: tuple[int, int]
) -> None:
    # The data-set decode and the upload decode give the same pixels, resized the same way
    # (training's evaluation pipeline against uploads: tests/training/test_upload_parity.py).
    for path, _ in lesions:
        expected = eval_resize(read_image(str(path)), size)
        got = prepare_image(path.read_bytes(), size, MAX).model_input
        assert got.shape == (*size, 3) and got.dtype == np.uint8
        assert np.array_equal(got, expected), path.name


def test_brightness_and_contrast_describe_the_model_input(
    lesions: list[tuple[Path, str]],
) -> None:
    data = lesions[0][0].read_bytes()
    prepared = prepare_image(data, (112, 150), MAX)
    y = prepared.model_input.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert prepared.brightness == pytest.approx(y.mean(), abs=0.01)
    assert prepared.contrast == pytest.approx(y.std(), abs=0.01)
    assert 20 < prepared.brightness < 250 and prepared.contrast > 1  # a photo, not a flat field


@pytest.mark.parametrize(("tag", "k"), [(3, 2), (6, 1), (8, -1)])
def test_exif_orientation_is_applied(lesions: list[tuple[Path, str]], tag: int, k: int) -> None:
    upright = decode_image(lesions[0][0].read_bytes(), MAX).rgb
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k)))  # as a camera stores it
    exif = Image.Exif()
    exif[0x0112] = tag
    decoded = decode_image(png_bytes(stored, exif=exif), MAX)
    assert np.array_equal(decoded.rgb, upright)
    assert (decoded.width, decoded.height) == (600, 450)
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif)
    jpeg = decode_image(buf.getvalue(), MAX).rgb
    assert jpeg.shape == upright.shape
    assert np.abs(jpeg.astype(int) - upright).mean() < 3  # lossy, but upright


@pytest.mark.parametrize("tag", range(1, 9))
def test_jpeg_fast_path_gives_pillows_pixels_for_every_orientation(
    lesions: list[tuple[Path, str]], tag: int
) -> None:
    """Camera JPEGs skip Pillow's decode: pixels and orientation must be exactly Pillow's."""
    stored = Image.open(lesions[1][0])
    exif = Image.Exif()
    exif[0x0112] = tag
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=90, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    got = decode_image(buf.getvalue(), MAX)
    assert got.rgb.flags.c_contiguous
    assert np.array_equal(got.rgb, expected)
    assert (got.width, got.height) == (expected.shape[1], expected.shape[0])


def test_greyscale_jpeg_fast_path_matches_pillow() -> None:
    grey = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) % 251).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey, "L").save(buf, "JPEG", quality=90)
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.array_equal(decode_image(buf.getvalue(), MAX).rgb, expected)


def test_palette_with_and_without_transparency() -> None:
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    img.putdata([0, 1, 2])
    rgb = decode_image(png_bytes(img), MAX).rgb
    assert rgb.tolist() == [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]]
    rgb = decode_image(png_bytes(img, transparency=1), MAX).rgb
    assert rgb.tolist() == [[[255, 0, 0], [255, 255, 255], [0, 0, 255]]]


def test_alpha_is_composited_on_white() -> None:
    pixels = np.array([[[100, 50, 0, 0], [100, 50, 0, 255], [100, 50, 0, 128]]], np.uint8)
    rgb = decode_image(png_bytes(Image.fromarray(pixels, "RGBA")), MAX).rgb.astype(int)
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [100, 50, 0]
    expected = (np.array([100, 50, 0]) * 128 + 255 * 127) / 255
    assert np.abs(rgb[0, 2] - expected).max() <= 1
    la = np.array([[[90, 0], [90, 255]]], np.uint8)
    rgb = decode_image(png_bytes(Image.fromarray(la, "LA")), MAX).rgb
    assert rgb.tolist() == [[[255, 255, 255], [90, 90, 90]]]


def test_greyscale_bilevel_and_sixteen_bit() -> None:
    grey = decode_image(png_bytes(Image.fromarray(np.array([[7, 200]], np.uint8), "L")), MAX)
    assert grey.rgb.tolist() == [[[7, 7, 7], [200, 200, 200]]]
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    assert decode_image(png_bytes(bilevel), MAX).rgb.tolist() == [[[0, 0, 0], [255, 255, 255]]]
    grey16 = np.array([[0x1234, 0xFFFF, 0x00FF]], np.uint16)
    rgb = decode_image(png_bytes(Image.fromarray(grey16)), MAX).rgb
    assert rgb.tolist() == [[[0x12] * 3, [0xFF] * 3, [0x00] * 3]]
    rgb16 = np.array([[[0xABCD, 0x0102, 0xFF00]]], dtype=">u2")
    data = raw_png(1, 1, 16, 2, b"\x00" + rgb16.tobytes())
    assert decode_image(data, MAX).rgb.tolist() == [[[0xAB, 0x01, 0xFF]]]


def test_cmyk_jpeg_becomes_rgb() -> None:
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta+yellow: red
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    rgb = decode_image(buf.getvalue(), MAX).rgb.astype(int)
    assert rgb.shape == (16, 16, 3)
    assert np.abs(rgb - [255, 0, 0]).max() <= 3


def test_type_is_judged_by_content() -> None:
    assert sniff_format(b"\xff\xd8\xff\xe0rest") == "jpeg"
    assert sniff_format(b"\x89PNG\r\n\x1a\nrest") == "png"
    for data in (b"hello, I am a JPEG", b"GIF89a" + bytes(20), b"<svg></svg>"):
        with pytest.raises(ImageRejected, match="neither JPEG nor PNG") as e:
            decode_image(data, MAX)
        assert e.value.status_code == 415
    with pytest.raises(ImageRejected, match="empty") as e:
        decode_image(b"", MAX)
    assert e.value.status_code == 422
    with pytest.raises(ImageRejected, match="cannot be read") as e:
        decode_image(b"\xff\xd8\xff" + b"text after a JPEG signature" * 10, MAX)
    assert e.value.status_code == 422


def test_truncated_photo_is_refused(lesions: list[tuple[Path, str]]) -> None:
    data = lesions[0][0].read_bytes()
    with pytest.raises(ImageRejected, match="truncated or corrupt") as e:
        decode_image(data[: len(data) // 2], MAX)
    assert e.value.status_code == 422
    png = png_bytes(Image.fromarray(decode_image(data, MAX).rgb))
    with pytest.raises(ImageRejected) as e:
        decode_image(png[: len(png) // 2], MAX)
    assert e.value.status_code == 422


@pytest.mark.parametrize("side", [20_000, 100_000])
def test_decompression_bomb_is_refused_before_decoding(side: int) -> None:
    # A few hundred bytes claiming side x side pixels (the first row compresses to nothing).
    bomb = raw_png(side, side, 8, 2, b"\x00" + bytes(3 * side))
    assert len(bomb) < 1000
    start = time.perf_counter()
    with pytest.raises(ImageRejected, match="pixels") as e:
        decode_image(bomb, MAX)
    assert e.value.status_code == 413
    assert time.perf_counter() - start < 1.0


def test_pixel_limit_says_the_size(lesions: list[tuple[Path, str]]) -> None:
    with pytest.raises(ImageRejected, match="600x450 = 270000 pixels; the limit is 100000") as e:
        decode_image(lesions[0][0].read_bytes(), 100_000)
    assert e.value.status_code == 413
