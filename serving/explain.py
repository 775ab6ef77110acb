"""Where the model looked: the exported model's class-activation maps, made readable.

A version exported with maps (``metadata.json`` ``explain``) returns, for each image, one
low-resolution map per class (``cam__2``, ``float32 [7, h, w]``, logit units: the last feature
map weighted by the class's weights, plus its bias; docs/explain.md). Asked with
``explain=true``, the gateway answers the maps of the top classes of the ranking, each scaled to
[0, 1] by its own range (1: where the image counts most for the class; 0: least): a grid of
numbers, no pixels of the photo, so it is stored with the answer whatever the consent. The
photo with the map laid over it is drawn by the page in the browser, or by
``GET /v1/predictions/{id}/overlay.png`` from a photo kept with consent.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from contracts.labels import CLASS_INDEX, CLASS_NAMES

TOP = 3  # maps answered: the top of the ranking
DIGITS = 3
ALPHA = 0.45  # the map's weight in an overlay


def normalised(cam: np.ndarray) -> np.ndarray:
    """One class's map scaled to [0, 1] by its own range (all zeros if flat). The map holds the
    class's bias in every cell (its mean is the logit), so only its relative values say where
    the model looked: min-max, not a cut at zero, which the bias alone could blank."""
    cam = np.asarray(cam, dtype=np.float64)
    span = float(cam.max() - cam.min()) if cam.size else 0.0
    return (cam - cam.min()) / span if span > 0 else np.zeros_like(cam)


def explanation(
    cams: np.ndarray, ranking: list[tuple[str, float]], method: str = "cam"
) -> dict[str, Any]:
    """The ``explanation`` of an answer: the maps of the ``TOP`` classes of ``ranking``.

    Args:
        cams: ``[7, h, w]``, the model's maps in CLASSES order.
        ranking: ``(code, probability)`` best first (after the body-location rules).
    """
    cams = np.asarray(cams)
    if cams.ndim != 3 or cams.shape[0] != len(CLASS_INDEX):
        raise ValueError(f"class-activation maps of shape {cams.shape}, expected [7, h, w]")
    maps = [
        {
            "code": code,
            "name": CLASS_NAMES[code],
            "map": np.round(normalised(cams[CLASS_INDEX[code]]), DIGITS).tolist(),
        }
        for code, _ in ranking[:TOP]
    ]
    return {
        "available": True,
        "method": method,
        "grid": [int(cams.shape[1]), int(cams.shape[2])],
        "maps": maps,
        "note": "1 = where the image counts most for the class, 0 = least; a coarse "
        f"{cams.shape[1]}x{cams.shape[2]} grid over the whole photo",
    }


def unavailable(version: str) -> dict[str, Any]:
    """What an answer says when ``explain=true`` but the version has no maps."""
    return {
        "available": False,
        "method": None,
        "grid": None,
        "maps": [],
        "note": f"version {version} has no class-activation maps (exported before they were "
        "added): the ranking is given without them",
    }


def overlay(rgb: np.ndarray, grid: list[list[float]]) -> np.ndarray:
    """The photo (``uint8 [H, W, 3]`` RGB) with ``grid`` (values in [0, 1]) laid over it in a
    blue (0) to red (1) colour scale, smoothly upsampled to the photo's size."""
    heat = np.asarray(grid, dtype=np.float32)
    height, width = rgb.shape[:2]
    up = cv2.resize(heat, (width, height), interpolation=cv2.INTER_CUBIC)
    colour = cv2.applyColorMap(np.clip(up * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)  # BGR
    blended = (1 - ALPHA) * rgb.astype(np.float32) + ALPHA * colour[..., ::-1].astype(np.float32)
    return np.clip(blended, 0, 255).astype(np.uint8)


def png(rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError("the overlay could not be encoded as PNG")
    return bytes(encoded)
