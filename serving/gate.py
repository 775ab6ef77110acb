"""The gate: what the gateway refuses to diagnose, for the version it serves.

An upload gets a diagnosis only if it passes, in order (``contracts.quality``, whose reason
codes and sentences the answers carry):

1. the geometry of the decoded image (``too_small``, ``aspect_ratio``), checked before the
   resize, so an absurd image costs no resize;
2. the content of the model input (``uniform``, ``colourless``, ``underexposed``,
   ``overexposed``, ``blurred``), on the features ``contracts.images.prepare_decoded``
   measured once;
3. the model's out-of-distribution score (``out_of_distribution``), returned by Triton with
   the probabilities, for a version exported with it (``gate.ood`` in its ``metadata.json``).

Checks 1 and 2 run before Triton is called: a refused image never reaches the model. Their
thresholds come from the served version's ``metadata.json`` (``gate.quality``, chosen at export
from the training images); each ``SKIN_QUALITY_*`` setting overrides one. A version exported
before the gate still serves: with the settings' thresholds if any are given, else without
quality checks, and without the score; :func:`gate_for` says so in a warning and on /readyz.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contracts.images import (
    DecodedImage,
    PreparedImage,
    decode_image,
    eval_resize,
    prepare_decoded,
)
from contracts.metadata import MetadataError, VersionMetadata
from contracts.quality import (
    ASPECT_RATIO,
    BLURRED,
    COLOURLESS,
    NOT_A_LESION,
    OUT_OF_DISTRIBUTION,
    OVEREXPOSED,
    TOO_SMALL,
    UNDEREXPOSED,
    UNIFORM,
    QualityThresholds,
    Refusal,
    check_content,
    check_geometry,
    measure,
    out_of_distribution,
)
from contracts.tensors import OOD_OUTPUT_NAME
from serving.settings import Settings

REJECT, FLAG = "reject", "flag"  # SKIN_REFUSAL_MODE: answer 422, or 201 with the ranking withheld
# The threshold each quality reason compares with (QualityThresholds field).
BOUNDS = {
    TOO_SMALL: "min_short_side",
    ASPECT_RATIO: "max_aspect",
    UNIFORM: "min_contrast",
    COLOURLESS: "min_colourfulness",
    UNDEREXPOSED: "min_brightness",
    OVEREXPOSED: "max_brightness",
    BLURRED: "min_sharpness",
}
# Bounds nothing crosses: the base a version without ``gate.quality`` gets when the settings
# give some thresholds (only those are then checked).
UNBOUNDED = QualityThresholds(
    min_short_side=0,
    max_aspect=math.inf,
    min_contrast=-math.inf,
    min_brightness=-math.inf,
    max_brightness=math.inf,
    min_sharpness=-math.inf,
    min_colourfulness=-math.inf,
)
REEXPORT = "re-export it to get the gate (docs/gateway.md, 'What is refused')"


@dataclass(frozen=True)
class GatePolicy:
    """What the settings say about the gate: checks on or off, and threshold overrides
    (``QualityThresholds`` field name -> value)."""

    quality_checks: bool = True
    ood_checks: bool = True
    overrides: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> GatePolicy:
        return cls(settings.quality_checks, settings.ood_checks, settings.quality_overrides)


@dataclass(frozen=True)
class Gate:
    """The checks one served version gets.

    Args:
        quality: the quality thresholds, or None (no quality checks).
        quality_source: where they come from: ``metadata.json``, ``metadata.json and
            settings``, ``settings``, or ``none``/``off`` without checks.
        ood_threshold: the score over which an image is refused, or None (no score check).
        status: one line for /readyz.
        warnings: what an operator should know (logged once per version at load).
    """

    quality: QualityThresholds | None
    quality_source: str
    ood_threshold: float | None
    status: str
    warnings: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """JSON for /v1/models (unbounded thresholds as null)."""
        quality = None
        if self.quality is not None:
            quality = {
                k: (v if math.isfinite(v) else None) for k, v in self.quality.to_dict().items()
            }
        return {
            "quality": quality,
            "quality_source": self.quality_source,
            "ood_threshold": self.ood_threshold,
            "status": self.status,
            "warnings": list(self.warnings),
        }


NO_GATE = Gate(None, "none", None, "no checks")


def _quality(
    metadata: VersionMetadata | None, version: str, policy: GatePolicy
) -> tuple[QualityThresholds | None, str, list[str]]:
    if not policy.quality_checks:
        return None, "off", []
    warnings: list[str] = []
    try:
        base = metadata.quality_thresholds() if metadata is not None else None
    except MetadataError as e:
        base = None
        warnings.append(f"{e}: its quality thresholds are ignored")
    overrides = dict(policy.overrides)
    if base is not None:
        if not overrides:
            return base, "metadata.json", warnings
        names = ", ".join(f"SKIN_QUALITY_{k.upper()}" for k in sorted(overrides))
        return base.replace(**overrides), f"metadata.json and settings ({names})", warnings
    if overrides:
        names = ", ".join(f"SKIN_QUALITY_{k.upper()}" for k in sorted(overrides))
        warnings.append(
            f"version {version} has no quality thresholds (gate.quality) in its metadata.json: "
            f"only the ones the settings give are checked ({names}); {REEXPORT}"
        )
        return UNBOUNDED.replace(**overrides), f"settings ({names})", warnings
    warnings.append(
        f"version {version} has no quality thresholds (gate.quality) in its metadata.json "
        f"(exported before the gate, or the file cannot be read): no quality checks; {REEXPORT}, "
        "or set SKIN_QUALITY_* thresholds"
    )
    return None, "none", warnings


def _ood(
    metadata: VersionMetadata | None,
    version: str,
    policy: GatePolicy,
    outputs: Sequence[str] | None,
) -> tuple[float | None, str, list[str]]:
    if not policy.ood_checks:
        return None, "out-of-distribution score not checked (SKIN_OOD_CHECKS=off)", []
    threshold = metadata.ood_threshold() if metadata is not None else None
    if threshold is None:
        return (
            None,
            "no out-of-distribution score",
            [
                f"version {version} has no out-of-distribution score (no gate.ood in its "
                "metadata.json: exported before the gate): it is served with the quality checks "
                f"only, so a photo of anything else that passes them gets a diagnosis; {REEXPORT}"
            ],
        )
    if outputs is not None and OOD_OUTPUT_NAME not in outputs:
        return (
            None,
            "out-of-distribution score not checked (Triton's model has no score output)",
            [
                f"metadata.json of version {version} has an out-of-distribution threshold but "
                f"Triton's model has no output {OOD_OUTPUT_NAME!r} (outputs {list(outputs)}): the "
                "score is not checked; reload the model from the repository"
            ],
        )
    return threshold, f"out-of-distribution score over {threshold:.4g} refused", []


def gate_for(
    metadata: VersionMetadata | None,
    version: str,
    policy: GatePolicy,
    outputs: Sequence[str] | None = None,
) -> Gate:
    """The checks of one version, from its ``metadata.json`` (None: unreadable), the settings,
    and the outputs Triton says the model has (None: not known, trust ``metadata.json``)."""
    quality, source, warnings = _quality(metadata, version, policy)
    ood, ood_status, ood_warnings = _ood(metadata, version, policy, outputs)
    if quality is not None:
        quality_status = f"quality checks from {source}"
    elif source == "off":
        quality_status = "quality checks off (SKIN_QUALITY_CHECKS=off)"
    else:
        quality_status = "no quality checks"
    status = f"version {version}: {quality_status}; {ood_status}"
    return Gate(quality, source, ood, status, tuple(warnings + ood_warnings))


@dataclass(frozen=True)
class Screened:
    """An upload after the quality checks: refused (``refusal``) or ready for the model.

    ``prepared`` is None when the geometry refused it (it was never resized).
    """

    decoded: DecodedImage
    prepared: PreparedImage | None
    refusal: Refusal | None
    bound: float | None  # the threshold the refused image crossed

    def features(self) -> dict[str, float]:
        """The measured features (only the geometry's when refused before the resize)."""
        if self.prepared is not None:
            return self.prepared.features.to_dict()
        short, long = sorted((self.decoded.width, self.decoded.height))
        return {"short_side": float(short), "aspect": round(long / max(short, 1), 3)}


def _bound(refusal: Refusal | None, quality: QualityThresholds) -> float | None:
    if refusal is None:
        return None
    value = float(getattr(quality, BOUNDS[refusal.code]))
    return value if math.isfinite(value) else None


def screen_decoded(
    decoded: DecodedImage, size: tuple[int, int], quality: QualityThresholds | None
) -> Screened:
    """The quality checks around the resize: geometry first, then the content."""
    if quality is not None:
        refusal = check_geometry(decoded.width, decoded.height, quality)
        if refusal is not None:
            return Screened(decoded, None, refusal, _bound(refusal, quality))
    prepared = prepare_decoded(decoded, size)
    if quality is None:
        return Screened(decoded, prepared, None, None)
    refusal = check_content(prepared.features, quality)
    return Screened(decoded, prepared, refusal, _bound(refusal, quality))


def screen(
    data: bytes,
    size: tuple[int, int],
    max_pixels: int,
    sha256: str | None,
    quality: QualityThresholds | None,
) -> Screened:
    """Decode an upload and run the quality checks (CPU work: call it in a worker thread).

    Raises:
        ImageRejected: the bytes are not a usable JPEG/PNG (415, 413, 422).
    """
    return screen_decoded(decode_image(data, max_pixels, sha256), size, quality)


def screen_pixels(
    rgb: np.ndarray, size: tuple[int, int], quality: QualityThresholds | None
) -> tuple[np.ndarray | None, Refusal | None]:
    """The same checks for an RGB ``uint8`` image already decoded (batch predict): the model
    input, or None when refused on the geometry, and the refusal if any."""
    height, width = rgb.shape[:2]
    if quality is not None:
        refusal = check_geometry(width, height, quality)
        if refusal is not None:
            return None, refusal
    model_input = eval_resize(rgb, size)
    if quality is None:
        return model_input, None
    return model_input, check_content(measure(model_input, width, height), quality)


def check_score(score: float, threshold: float) -> Refusal | None:
    """The model's verdict; a score that is not a number refuses too (the model failed)."""
    if math.isnan(score):
        return Refusal(
            OUT_OF_DISTRIBUTION,
            f"{NOT_A_LESION}: the model's out-of-distribution score for it is not a number, "
            "so it cannot be judged. Send a dermoscopic photo of one lesion",
        )
    return out_of_distribution(score, threshold)
