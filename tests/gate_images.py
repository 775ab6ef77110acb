"""Uploads the gate must refuse, one per reason code, built from a real lesion photo (or in
code for the frames), for the gateway, batch predict and page tests; and a served version's
metadata.json copied with another gate, for a gateway or batch predict to read.

The degraded photos are made relative to the thresholds of the version under test (its
``metadata.json``), so each is what its name says against THAT version: ``expect_refusal``
checks, with the contract's own functions, that the built image fails the intended check and
no earlier one; the gateway's answer is then what the tests assert.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from contracts.images import eval_resize, read_image
from contracts.metadata import METADATA_FILE
from contracts.quality import (
    QualityThresholds,
    check_content,
    check_geometry,
    luminance,
    measure,
)


def encode(rgb: np.ndarray, fmt: str = "JPEG", **kw: object) -> bytes:
    """An RGB ``uint8`` array as JPEG (quality 95) or PNG bytes."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        kw.setdefault("quality", 95)
    Image.fromarray(rgb).save(buf, fmt, **kw)
    return buf.getvalue()


def lesion(real_lesions_dir: Path, image_id: str) -> np.ndarray:
    """A full-size real lesion photo, decoded."""
    return read_image(str(real_lesions_dir / f"{image_id}.jpg"))


def contrasty_lesion(real_lesions_dir: Path, size: tuple[int, int]) -> np.ndarray:
    """The real photo with the most contrast at the model's input: darkening or brightening it
    leaves it the most structure."""
    paths = sorted(real_lesions_dir.glob("*.jpg"))
    return max(
        (read_image(str(p)) for p in paths),
        key=lambda rgb: measure(eval_resize(rgb, size), rgb.shape[1], rgb.shape[0]).contrast,
    )


def one_pixel_png() -> bytes:
    return encode(np.full((1, 1, 3), 128, np.uint8), "PNG")


def sliver_png(width: int = 100_000, height: int = 10) -> bytes:
    """A 100000 x 10 PNG (one million pixels, under SKIN_MAX_PIXELS): its short side is 10."""
    row = np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8)
    return encode(np.repeat(np.stack([row] * 3, -1)[None], height, axis=0), "PNG")


def strip(rgb: np.ndarray, t: QualityThresholds) -> np.ndarray:
    """The photo squashed into a strip tall enough (the minimum short side) and twice as long
    as the widest aspect accepted."""
    height = max(t.min_short_side, 1)
    width = int(np.ceil(height * t.max_aspect * 2))
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def black_frame(width: int = 600, height: int = 450) -> np.ndarray:
    """A covered lens: a frame of one colour."""
    return np.zeros((height, width, 3), np.uint8)


def greyscale(rgb: np.ndarray) -> np.ndarray:
    """The photo as a greyscale copy in RGB (R = G = B = its luminance): a black-and-white
    print or scan of it, with its exposure, contrast and focus unchanged."""
    y = np.clip(luminance(rgb).round(), 0, 255).astype(np.uint8)
    return np.repeat(y[..., None], 3, axis=-1)


def underexposed(rgb: np.ndarray, t: QualityThresholds, size: tuple[int, int]) -> np.ndarray:
    """The photo with its exposure cut (all values scaled down) to 80 % of the least bright
    training photo's brightness: darker, with its structure kept."""
    brightness = measure(eval_resize(rgb, size), rgb.shape[1], rgb.shape[0]).brightness
    factor = 0.8 * t.min_brightness / brightness
    return np.clip(rgb.astype(np.float32) * factor, 0, 255).round().astype(np.uint8)


def overexposed(rgb: np.ndarray, t: QualityThresholds, size: tuple[int, int]) -> np.ndarray:
    """The photo with light added (every value raised, clipped at white) until its brightness
    is halfway between the brightest training photo's and pure white."""
    brightness = measure(eval_resize(rgb, size), rgb.shape[1], rgb.shape[0]).brightness
    target = t.max_brightness + (255 - t.max_brightness) / 2
    out = rgb.astype(np.float32)
    for _ in range(20):  # clipping slows the rise: raise until the target is reached
        shifted = np.clip(out + (target - brightness), 0, 255)
        brightness = measure(eval_resize(shifted.astype(np.uint8), size), 1, 1).brightness
        out = shifted
        if brightness >= target - 1:
            break
    return out.round().astype(np.uint8)


def blurred(rgb: np.ndarray, sigma: float = 8.0) -> np.ndarray:
    """The photo out of focus: a Gaussian blur of ``sigma`` pixels at full size."""
    return cv2.GaussianBlur(rgb, (0, 0), sigma)


def non_lesion_photos() -> dict[str, np.ndarray]:
    """Photographs that are not of skin lesions, as scikit-image ships them."""
    from skimage import data

    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}


def expected_refusal(rgb: np.ndarray, t: QualityThresholds, size: tuple[int, int]) -> str | None:
    """The quality check an image fails first against ``t`` (the contract's own functions)."""
    height, width = rgb.shape[:2]
    refusal = check_geometry(width, height, t) or check_content(
        measure(eval_resize(rgb, size), width, height), t
    )
    return refusal.code if refusal else None


def expect_refusal(
    code: str, rgb: np.ndarray, t: QualityThresholds, size: tuple[int, int]
) -> np.ndarray:
    """``rgb``, after checking it fails ``code`` first: a built image that does not (the
    version's thresholds moved) fails the test here, saying so, not in the gateway."""
    got = expected_refusal(rgb, t, size)
    assert got == code, f"the image built to be {code} is {got} against {t}"
    return rgb


def version_copy(
    repository: Path, target: Path, edit: Callable[[dict[str, Any]], None], version: str = "1"
) -> Path:
    """A repository for a gateway or batch predict to read while Triton keeps serving
    ``repository``: the version's metadata.json, changed by ``edit``. Returns ``target``."""
    name = "skin_lesion"
    meta = json.loads((repository / name / version / METADATA_FILE).read_text())
    edit(meta)
    folder = target / name / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    return target


def ood_limit(value: float) -> Callable[[dict[str, Any]], None]:
    """An ``edit`` for :func:`version_copy`: the out-of-distribution threshold set to ``value``."""

    def edit(meta: dict[str, Any]) -> None:
        meta["gate"]["ood"]["threshold"] = value

    return edit


def score_of(grpc_url: str, rgb: np.ndarray, size: tuple[int, int]) -> float:
    """The served model's out-of-distribution score of an image, asked of Triton directly
    (``eval_resize`` to ``size``, as the gateway and batch predict send it)."""
    from serving.triton.client import TritonClassifier

    with TritonClassifier(grpc_url) as client:
        _, scores = client.predict_with_score(eval_resize(rgb, size)[None])
    return float(np.asarray(scores).reshape(-1)[0])
