"""Image transforms. ``eval_resize`` is THE resize of the project: training's evaluation
pipeline and the serving gateway both call it, so the two cannot drift apart."""

from __future__ import annotations

import cv2
import numpy as np

# Resize policy recorded in every exported model's metadata.json.
RESIZE_POLICY = "cv2.resize to (height, width), INTER_AREA, no crop, RGB uint8"


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
