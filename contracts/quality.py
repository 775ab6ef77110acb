"""The image-quality gate: what an upload must be before the model is asked about it.

Every check has a reason code (machine-readable, stable) and a sentence a person can act on.
The thresholds are not guesses: export computes them from the training split's own images
(:func:`fit_quality_thresholds`, a low or high percentile of each feature, measured exactly as
the gateway measures an upload) and stores them in the version's ``metadata.json`` under
``gate.quality``; the gateway's settings may override each one.

Features, all but the geometry measured on the MODEL INPUT (``contracts.images.eval_resize`` of
the decoded upload at the served version's size), so training images and uploads of any
resolution are compared at the same scale:

- ``short_side`` and ``aspect`` (long side / short side) of the decoded image;
- ``brightness``: mean luminance (ITU-R BT.601), 0-255; ``contrast``: its standard deviation;
- ``sharpness``: variance of the Laplacian of the luminance (a blurred photo has little
  high-frequency energy);
- ``colourfulness``: Hasler and Suesstrunk's (2003) measure on the opponent channels
  ``R - G`` and ``(R + G) / 2 - B``: a dermoscopic photo of skin is never grey, while scans,
  documents, greyscale medical images and black-and-white photos are.

The model's own out-of-distribution score (``gate.ood`` in ``metadata.json``, the Triton output
:data:`contracts.tensors.OOD_OUTPUT_NAME`) is the last check; its reason code is
:data:`OUT_OF_DISTRIBUTION`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

# Reason codes, in the order the checks run: the first failed one is the answer's reason.
TOO_SMALL = "too_small"
ASPECT_RATIO = "aspect_ratio"
UNIFORM = "uniform"
COLOURLESS = "colourless"
UNDEREXPOSED = "underexposed"
OVEREXPOSED = "overexposed"
BLURRED = "blurred"
OUT_OF_DISTRIBUTION = "out_of_distribution"
MULTIPLE_IMAGES = "multiple_images"
REASON_CODES: tuple[str, ...] = (
    TOO_SMALL,
    ASPECT_RATIO,
    UNIFORM,
    COLOURLESS,
    UNDEREXPOSED,
    OVEREXPOSED,
    BLURRED,
    OUT_OF_DISTRIBUTION,
    MULTIPLE_IMAGES,
)
NOT_A_LESION = "this does not look like a dermoscopic photo of a skin lesion"

# Percentiles of the training images that set the thresholds: their range (0 and 100), so a
# check refuses only what is beyond every training image. The whole gate may refuse at most 1 %
# of new lesion photos with 95 % confidence (training/export/gate.py): on 1,376 validation images
# that is 7 refusals, and the 0.1/99.9 percentiles (measured on make run's model) spent all 7 on
# the checks, leaving the out-of-distribution score none; the range spends 2 (docs/results.md,
# "Refusing what is not a lesion photo").
LOW_PERCENTILE = 0.0
HIGH_PERCENTILE = 100.0
# The model squashes an image to its input's aspect without cropping; beyond this factor
# times the widest training aspect, a lesion is distorted by more than the model ever saw.
ASPECT_TOLERANCE = 1.5


@dataclass(frozen=True)
class ImageFeatures:
    """What the quality checks look at, for one image."""

    short_side: int
    aspect: float
    brightness: float
    contrast: float
    sharpness: float
    colourfulness: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 3) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class QualityThresholds:
    """Bounds an image must keep; stored in ``metadata.json`` as ``gate.quality``.

    Args:
        min_short_side: shorter side in pixels, at least.
        max_aspect: long side / short side, at most.
        min_contrast: luminance standard deviation, at least (below: a near-uniform frame).
        min_brightness: mean luminance, at least (below: under-exposed).
        max_brightness: mean luminance, at most (above: over-exposed).
        min_sharpness: variance of the Laplacian, at least (below: out of focus).
        min_colourfulness: colourfulness, at least (below: a grey image); ``-inf`` for
            versions exported before this check (their ``gate.quality`` lacks it).
    """

    min_short_side: int
    max_aspect: float
    min_contrast: float
    min_brightness: float
    max_brightness: float
    min_sharpness: float
    min_colourfulness: float = -math.inf

    def to_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> QualityThresholds:
        """Parse ``gate.quality``; ValueError naming the missing or non-numeric keys
        (``min_colourfulness`` may be missing: versions exported before that check)."""
        raw = {"min_colourfulness": -math.inf, **raw}
        if raw["min_colourfulness"] is None:  # -inf travels through JSON as null
            raw["min_colourfulness"] = -math.inf
        names = [f.name for f in fields(cls)]
        bad = [
            n
            for n in names
            if not isinstance(raw.get(n), int | float) or isinstance(raw.get(n), bool)
        ]
        if bad:
            raise ValueError(f"quality thresholds lack numeric {', '.join(bad)}")
        values = {n: float(raw[n]) for n in names}
        return cls(**{**values, "min_short_side": int(values["min_short_side"])})  # type: ignore[arg-type]

    def replace(self, **overrides: float | None) -> QualityThresholds:
        """A copy with the given (non-None) values; the settings' overrides."""
        current = self.to_dict()
        current.update({k: v for k, v in overrides.items() if v is not None})
        return QualityThresholds.from_dict(current)


@dataclass(frozen=True)
class Refusal:
    """Why an image gets no diagnosis: a reason code and a sentence for the user."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Luminance (ITU-R BT.601 weights) of an RGB ``uint8`` image, ``float32`` 0-255."""
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler and Suesstrunk's colourfulness of an RGB ``uint8`` image (0 for a grey one)."""
    x = rgb.astype(np.float32)
    rg = x[..., 0] - x[..., 1]
    yb = 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
    spread = math.hypot(float(rg.std()), float(yb.std()))
    return spread + 0.3 * math.hypot(float(rg.mean()), float(yb.mean()))


def measure(model_input: np.ndarray, width: int, height: int) -> ImageFeatures:
    """The features of an upload: geometry of the decoded ``width x height`` image, the rest
    of ``model_input`` (the ``eval_resize`` of it at the served version's size)."""
    y = luminance(model_input)
    sharpness = float(cv2.Laplacian(y, cv2.CV_32F).var())
    short, long = sorted((int(width), int(height)))
    return ImageFeatures(
        short_side=short,
        aspect=long / max(short, 1),
        brightness=float(y.mean()),
        contrast=float(y.std()),
        sharpness=sharpness,
        colourfulness=colourfulness(model_input),
    )


def fit_quality_thresholds(
    features: Sequence[ImageFeatures], input_size: tuple[int, int]
) -> QualityThresholds:
    """Thresholds from the training images' features (see the module doc).

    ``min_short_side`` is the smaller of the model's input height and width and the training
    images' low percentile: an upload smaller than what the model takes would be upsampled,
    its detail invented.
    """
    if not features:
        raise ValueError("no training images to fit the quality thresholds on")
    column = {
        f.name: np.array([getattr(x, f.name) for x in features], dtype=np.float64)
        for f in fields(ImageFeatures)
    }

    # Rounded outward to 3 decimals, so that no fitted image falls outside its own thresholds.
    def low(name: str) -> float:
        return math.floor(float(np.percentile(column[name], LOW_PERCENTILE)) * 1000) / 1000

    def high(name: str) -> float:
        return math.ceil(float(np.percentile(column[name], HIGH_PERCENTILE)) * 1000) / 1000

    return QualityThresholds(
        min_short_side=int(min(min(input_size), low("short_side"))),
        max_aspect=math.ceil(high("aspect") * ASPECT_TOLERANCE * 1000) / 1000,
        min_contrast=low("contrast"),
        min_brightness=low("brightness"),
        max_brightness=high("brightness"),
        min_sharpness=low("sharpness"),
        min_colourfulness=low("colourfulness"),
    )


def check_geometry(width: int, height: int, t: QualityThresholds) -> Refusal | None:
    """The size checks, which need no pixels (run them before the resize)."""
    short, long = sorted((int(width), int(height)))
    if short < t.min_short_side:
        return Refusal(
            TOO_SMALL,
            f"the image is {width}x{height} pixels; its shorter side must be at least "
            f"{t.min_short_side}: send the original photo, not a thumbnail or a tight crop",
        )
    if long / max(short, 1) > t.max_aspect:
        return Refusal(
            ASPECT_RATIO,
            f"the image is {width}x{height} pixels ({long / max(short, 1):.1f}:1); at most "
            f"{t.max_aspect:.1f}:1 is accepted: send the uncropped dermoscopic photo",
        )
    return None


def check_content(f: ImageFeatures, t: QualityThresholds) -> Refusal | None:
    """The pixel checks on the model input, in order; the first that fails."""
    if f.contrast < t.min_contrast:
        return Refusal(
            UNIFORM,
            f"the image is nearly uniform (contrast {f.contrast:.1f}; training photos have at "
            f"least {t.min_contrast:.1f}): is the lens covered, or the frame blank?",
        )
    if f.colourfulness < t.min_colourfulness:
        return Refusal(
            COLOURLESS,
            f"the image has almost no colour (colourfulness {f.colourfulness:.1f}; training "
            f"photos have at least {t.min_colourfulness:.1f}): a dermoscopic photo of skin is "
            "never grey. Send the original colour photo, not a greyscale copy or a scan",
        )
    if f.brightness < t.min_brightness:
        return Refusal(
            UNDEREXPOSED,
            f"the image is too dark (mean brightness {f.brightness:.0f} of 255; training photos "
            f"have at least {t.min_brightness:.0f}): retake it with the dermatoscope's light on",
        )
    if f.brightness > t.max_brightness:
        return Refusal(
            OVEREXPOSED,
            f"the image is too bright (mean brightness {f.brightness:.0f} of 255; training "
            f"photos have at most {t.max_brightness:.0f}): retake it with less light or exposure",
        )
    if f.sharpness < t.min_sharpness:
        return Refusal(
            BLURRED,
            f"the image is out of focus (sharpness {f.sharpness:.1f}; training photos have at "
            f"least {t.min_sharpness:.1f}): retake it with the lesion in focus",
        )
    return None


def out_of_distribution(score: float, threshold: float) -> Refusal | None:
    """The model's verdict: a refusal when its score is over the version's threshold."""
    if score > threshold:
        return Refusal(
            OUT_OF_DISTRIBUTION,
            f"{NOT_A_LESION}: the model's out-of-distribution score is {score:.4g}, over this "
            f"version's limit of {threshold:.4g} (chosen so that at most 1 % of validation "
            "lesion photos exceed it). Send a dermoscopic photo of one lesion",
        )
    return None


def multiple_images(count: int) -> Refusal:
    """Two or more ``image`` parts in one request: which one would be diagnosed is a guess."""
    return Refusal(
        MULTIPLE_IMAGES,
        f"the request has {count} image parts; send exactly one image per prediction",
    )
