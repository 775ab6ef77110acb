"""Upload decoding: bytes -> oriented RGB ``uint8`` -> the served model's input, safely.

Accepts JPEG and PNG by their content (magic bytes), never by the declared type. The pixel
count is checked from the header before anything is decoded, so a decompression bomb costs
nothing. Every mode is brought to RGB ``uint8``:

- EXIF orientation is applied (phones store portrait photos rotated plus a tag).
- Transparency (RGBA, LA, palette with transparency) is composited on WHITE: transparent
  pixels carry no image, and the colour stored under them is arbitrary (often black or
  leftovers of an editor), so dropping alpha would feed the model invisible content.
- 16-bit greyscale keeps its high byte, as Pillow already does for 16-bit RGB.
- CMYK, YCbCr, palette, bilevel and greyscale go through Pillow's conversion to RGB.
- Multi-frame files (APNG, MPO) give their first frame; bytes after the image end are ignored.
- JPEG scan data is decoded strictly (libjpeg-turbo via simplejpeg), so a damaged file is
  refused instead of classified as the garbled picture libjpeg would make of it.

Speed: a colour or greyscale JPEG (every camera photo) is decoded once, by simplejpeg in strict
mode, with the same libjpeg-turbo settings as Pillow and OpenCV (accurate integer IDCT, fancy
upsampling), so the pixels are identical to theirs (a test checks it on the real photos);
Pillow only reads the header (size, EXIF). Measured on the 600x450 photos with the resize:
6.4 ms an image instead of 11.0 for Pillow's decode plus a separate strict pass
(docs/benchmarks.md, "The image path").
Other JPEGs (CMYK, YCCK) and every PNG go through Pillow.

``eval_resize`` is THE resize of the project: training's evaluation pipeline and the serving
gateway both call it, so the two cannot drift apart.

``prepare_decoded`` measures the model input once (``contracts.quality.measure``: one luminance
for brightness, contrast and sharpness), for the record, drift monitoring and the quality gate
alike. The gateway checks the geometry (``contracts.quality.check_geometry``) between
``decode_image`` and ``prepare_decoded``, so an absurd image is never resized.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from contracts.errors import DataError
from contracts.quality import ImageFeatures, luminance, measure

_MAGIC = {b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png"}
_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG"}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_FAST_JPEG_MODES = {"RGB", "L"}  # Pillow's mode from a YCbCr/RGB or greyscale JPEG header


class ImageRejected(ValueError):
    """The upload cannot be used; ``status_code`` is the HTTP status to answer with."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class DecodedImage:
    """An upload decoded to RGB: the pixels (oriented) and what the record keeps."""

    rgb: np.ndarray
    format: str  # "jpeg" | "png"
    sha256: str  # of the uploaded bytes
    width: int  # after EXIF orientation
    height: int


@dataclass(frozen=True)
class PreparedImage:
    """What goes to the model, plus the statistics the record keeps for drift monitoring and
    the features the quality gate checks."""

    model_input: np.ndarray  # uint8 [H, W, 3] at the model's input size
    decoded: DecodedImage
    brightness: float  # mean luminance (0-255) of the model input, rounded to 0.001
    contrast: float  # std of that luminance, rounded to 0.001
    features: ImageFeatures  # contracts.quality.measure of the model input, not rounded


def sniff_format(data: bytes) -> str:
    """``"jpeg"`` or ``"png"`` from the first bytes.

    Raises:
        ImageRejected: empty, or any other content (415).
    """
    if not data:
        raise ImageRejected("the image is empty: send a JPEG or PNG file in the 'image' field")
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    raise ImageRejected(
        "the image is neither JPEG nor PNG (checked by its content, not its declared type): "
        "send the original photo as JPEG or PNG",
        status_code=415,
    )


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode from JPEG/PNG to a contiguous RGB ``uint8`` array."""
    if img.mode in _SIXTEEN_BIT:
        grey = (np.clip(np.asarray(img), 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def _check_jpeg_data(data: bytes) -> None:
    """Refuse damaged JPEG scan data, which libjpeg decodes anyway, with only a warning.

    Pillow hides libjpeg's warnings ("Corrupt JPEG data: bad Huffman code", "premature end of
    data segment"), so a damaged upload would be classified as a garbled picture. libjpeg-turbo
    through simplejpeg in strict mode turns them into errors; at 1/8 scale it skips most of the
    inverse DCT (the Huffman decoding, where damage shows, runs in full).
    """
    colorspace = simplejpeg.decode_jpeg_header(data)[2]
    target = {"CMYK": "CMYK", "YCCK": "CMYK", "Gray": "GRAY"}.get(colorspace, "RGB")
    simplejpeg.decode_jpeg(data, colorspace=target, min_factor=8, strict=True)


_ORIENT = {  # EXIF orientation tag -> what ``ImageOps.exif_transpose`` does, on [H, W, 3]
    2: lambda a: a[:, ::-1],  # mirrored
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored vertically
    5: lambda a: a.transpose(1, 0, 2),  # transpose
    6: lambda a: np.rot90(a, -1),  # stored rotated 90 counter-clockwise: turn clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse
    8: lambda a: np.rot90(a, 1),
}


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation tag to ``[H, W, 3]`` as ``ImageOps.exif_transpose`` does."""
    op = _ORIENT.get(orientation)
    return rgb if op is None else np.ascontiguousarray(op(rgb))


def _decode_jpeg(data: bytes, img: Image.Image) -> np.ndarray:
    """One strict libjpeg-turbo decode to RGB, oriented by the EXIF tag Pillow read."""
    rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    return _orient(rgb, orientation if isinstance(orientation, int) else 1)


def decode_image(data: bytes, max_pixels: int, sha256: str | None = None) -> DecodedImage:
    """Decode a JPEG/PNG upload to oriented RGB ``uint8`` ``[H, W, 3]``.

    Args:
        data: the uploaded bytes.
        max_pixels: refuse images with more pixels than this, before decoding them.
        sha256: the hex digest of ``data`` when the caller has it already (else computed).

    Raises:
        ImageRejected: 415 not JPEG/PNG, 413 too many pixels, 422 truncated or corrupt.
    """
    fmt = sniff_format(data)
    try:
        img: Image.Image = Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[fmt]])
    except Image.DecompressionBombError as e:
        raise ImageRejected(f"the image has too many pixels ({e}); max {max_pixels}", 413) from e
    except UnidentifiedImageError as e:  # its message names a Python object and its address
        raise ImageRejected(
            f"the {fmt.upper()} header cannot be read (damaged, zero-sized or incomplete): "
            "upload the original file"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageRejected(f"the {fmt.upper()} file cannot be read ({e}): is it complete?") from e
    width, height = img.size
    if width * height > max_pixels:
        raise ImageRejected(
            f"the image is {width}x{height} = {width * height} pixels; the limit is "
            f"{max_pixels}: downscale it before uploading",
            status_code=413,
        )
    try:
        if fmt == "jpeg" and img.mode in _FAST_JPEG_MODES:
            rgb = _decode_jpeg(data, img)
        else:
            img.load()
            if fmt == "jpeg":
                _check_jpeg_data(data)
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img)
    except Image.DecompressionBombError as e:
        raise ImageRejected(f"the image has too many pixels: {e}", 413) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageRejected(
            f"the {fmt.upper()} file is truncated or corrupt ({e}): upload the complete file"
        ) from e
    digest = sha256 or hashlib.sha256(data).hexdigest()
    return DecodedImage(rgb, fmt, digest, rgb.shape[1], rgb.shape[0])


def luminance_stats(rgb: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the luminance (ITU-R BT.601 weights), 0-255; the same
    numbers as ``prepare_decoded``'s ``brightness`` and ``contrast``."""
    y = luminance(rgb)
    return round(float(y.mean()), 3), round(float(y.std()), 3)


def prepare_image(
    data: bytes, size: tuple[int, int], max_pixels: int, sha256: str | None = None
) -> PreparedImage:
    """Decode, orient and resize an upload for a model with input ``size = (height, width)``.

    CPU work: call it in a worker thread from async code.
    """
    return prepare_decoded(decode_image(data, max_pixels, sha256), size)


def prepare_decoded(decoded: DecodedImage, size: tuple[int, int]) -> PreparedImage:
    """Resize a decoded upload for a model with input ``size = (height, width)`` and measure it
    (the luminance is computed once, for the statistics and the quality features)."""
    model_input = eval_resize(decoded.rgb, size)
    features = measure(model_input, decoded.width, decoded.height)
    return PreparedImage(
        model_input,
        decoded,
        round(features.brightness, 3),
        round(features.contrast, 3),
        features,
    )


# Resize policy recorded in every exported model's metadata.json.
RESIZE_POLICY = "cv2.resize to (height, width), INTER_AREA, no crop, RGB uint8"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})


def eval_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB ``uint8`` image ``[H, W, 3]`` to ``size = (height, width)``.

    Area interpolation: the right filter for downscaling photos (no aliasing), and
    deterministic across platforms for ``uint8`` input.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    height, width = size
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def read_image(path: str) -> np.ndarray:
    """Decode an image file from a trusted data set to RGB ``uint8 [H, W, 3]``.

    cv2 decodes these JPEGs about 3x faster than PIL with the same pixels and, like the gateway
    must, applies EXIF orientation. Uploads go through :func:`decode_image` instead.
    """
    image = cv2.imread(path, cv2.IMREAD_COLOR_RGB)
    if image is None:
        raise DataError(f"cannot decode image {path}: re-export it as JPEG or PNG")
    return image


def index_images(root: Path) -> dict[str, str]:
    """``{stem: path}`` of every JPEG/PNG under ``root``, in one directory walk.

    Sorted walk, first hit wins, so the same folder always gives the same index.
    """
    index: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTENSIONS:
                index.setdefault(stem, os.path.join(folder, name))
    return index
