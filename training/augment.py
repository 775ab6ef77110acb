"""albumentations pipelines: ``uint8 [H, W, 3]`` RGB in, ``uint8 [height, width, 3]`` RGB out.

No normalisation here: it lives inside the model (``models.wrappers.ImageClassifier``).
The evaluation pipeline is exactly ``contracts.images.eval_resize``, the resize the gateway
calls. The training pipeline resizes with it first, then augments at the output size: the
geometry matches evaluation and the augmentations work on the smaller image.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import albumentations as A
import cv2
import numpy as np

from contracts.images import eval_resize


@dataclass
class AugmentOptions:
    """Training augmentations; each probability 0 turns its transform off.

    Dermoscopy has no up or down, so flips and any rotation are label-preserving.

    Attributes:
        hflip: probability of a horizontal flip.
        vflip: probability of a vertical flip.
        rotate90: probability of a 90-degree rotation; only used when height == width
            (on a non-square output it would distort the aspect; flips give 180 degrees).
        affine: probability of a random rotation/scale/shift (reflected borders).
        rotate: largest rotation in degrees for ``affine``.
        scale: largest relative zoom in or out for ``affine``.
        translate: largest shift, as a fraction of the side, for ``affine``.
        brightness_contrast: probability of a brightness/contrast change.
        brightness: largest relative brightness change.
        contrast: largest relative contrast change.
        hue_saturation: probability of a hue/saturation shift (lighting, camera white balance).
        hue: largest hue shift (OpenCV units, 0-180).
        saturation: largest saturation shift (0-255 scale).
    """

    hflip: float = 0.5
    vflip: float = 0.5
    rotate90: float = 0.5
    affine: float = 0.5
    rotate: float = 180.0
    scale: float = 0.1
    translate: float = 0.05
    brightness_contrast: float = 0.5
    brightness: float = 0.15
    contrast: float = 0.15
    hue_saturation: float = 0.3
    hue: int = 5
    saturation: int = 15


def _resize(image: np.ndarray, size: tuple[int, int], **_: Any) -> np.ndarray:
    return eval_resize(image, size)


def resize_step(size: tuple[int, int]) -> A.Lambda:
    """``eval_resize`` as an albumentations step (picklable for DataLoader workers)."""
    return A.Lambda(image=partial(_resize, size=tuple(size)), name="eval_resize")


def eval_transform(size: tuple[int, int]) -> A.Compose:
    """Evaluation/prediction pipeline: ``eval_resize`` to ``size = (height, width)`` only."""
    return A.Compose([resize_step(size)])


def train_transform(
    size: tuple[int, int], options: AugmentOptions | None = None, seed: int | None = None
) -> A.Compose:
    """Training pipeline: ``eval_resize`` to ``size``, then the augmentations in ``options``.

    Args:
        size: output ``(height, width)``.
        options: which augmentations, how strong; defaults when None.
        seed: seed of the pipeline's own random stream (albumentations ignores global seeds).
            DataLoader workers reseed it per worker (see ``training.datamodule``).
    """
    o = options or AugmentOptions()
    steps: list[A.BasicTransform] = [
        resize_step(size),
        A.HorizontalFlip(p=o.hflip),
        A.VerticalFlip(p=o.vflip),
    ]
    if size[0] == size[1]:
        steps.append(A.RandomRotate90(p=o.rotate90))
    steps += [
        A.Affine(
            rotate=(-o.rotate, o.rotate),
            scale=(1 - o.scale, 1 + o.scale),
            translate_percent=(-o.translate, o.translate),
            border_mode=cv2.BORDER_REFLECT_101,
            p=o.affine,
        ),
        A.RandomBrightnessContrast(
            brightness_limit=o.brightness, contrast_limit=o.contrast, p=o.brightness_contrast
        ),
        A.HueSaturationValue(
            hue_shift_limit=o.hue,
            sat_shift_limit=o.saturation,
            val_shift_limit=0,
            p=o.hue_saturation,
        ),
    ]
    return A.Compose([s for s in steps if s.p > 0], seed=seed)
