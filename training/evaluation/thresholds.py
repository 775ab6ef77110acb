"""Operating points: the threshold on a score that reaches a target sensitivity.

Chosen on the validation split, reported on the test split, stored in the exported model's
``metadata.json`` under ``thresholds`` for the gateway's referral. A case is referred when its
score is *at or above* the threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from contracts.errors import DataError
from contracts.labels import CLASS_INDEX, CLASSES, MALIGNANT, MELANOMA

MALIGNANT_INDICES: tuple[int, ...] = tuple(CLASS_INDEX[c] for c in CLASSES if c in MALIGNANT)
# The two referral scores: P(mel), and the summed probability of the malignant group.
TARGETS: tuple[str, ...] = ("mel", "malignant")


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold and what it achieved on the split it was chosen on.

    ``val_*`` names match the ``metadata.json`` structure the gateway reads.
    """

    threshold: float
    target_sensitivity: float
    val_sensitivity: float
    val_specificity: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def scores(probs: np.ndarray, target: str) -> np.ndarray:
    """The referral score of each row of ``probs [N, 7]``: P(mel) or P(akiec + bcc + mel)."""
    probs = np.asarray(probs, dtype=np.float64)
    if target == "mel":
        return probs[:, CLASS_INDEX[MELANOMA]]
    if target == "malignant":
        return probs[:, list(MALIGNANT_INDICES)].sum(axis=1)
    raise ValueError(f"unknown referral target {target!r}; expected one of {TARGETS}")


def positives(labels: np.ndarray, target: str) -> np.ndarray:
    """Boolean mask of the cases the referral must catch for ``target``."""
    labels = np.asarray(labels)
    if target == "mel":
        return labels == CLASS_INDEX[MELANOMA]
    if target == "malignant":
        return np.isin(labels, MALIGNANT_INDICES)
    raise ValueError(f"unknown referral target {target!r}; expected one of {TARGETS}")


def rates(score: np.ndarray, positive: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of referring ``score >= threshold``; NaN when undefined."""
    flagged = np.asarray(score) >= threshold
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    sens = float((flagged & positive).sum() / n_pos) if n_pos else math.nan
    spec = float((~flagged & ~positive).sum() / n_neg) if n_neg else math.nan
    return sens, spec


def choose_threshold(
    score: np.ndarray, positive: np.ndarray, target_sensitivity: float = 0.95
) -> OperatingPoint:
    """The highest threshold whose sensitivity on these cases reaches ``target_sensitivity``.

    The highest such threshold is the one that costs the least specificity. It is the k-th
    highest positive score, k = ceil(target * positives), so at least k positives are referred.

    Raises:
        DataError: no positive cases (the threshold would be meaningless).
        ValueError: a target outside (0, 1].
    """
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    score = np.asarray(score, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    pos_scores = np.sort(score[positive])[::-1]
    if pos_scores.size == 0:
        raise DataError(
            "no positive cases to choose a threshold on: the split needs melanomas (and "
            "malignant lesions); use a larger validation split"
        )
    # The 1e-9 keeps 0.95 * 20 = 19.000000000000004 from becoming 20.
    k = max(1, math.ceil(target_sensitivity * pos_scores.size - 1e-9))
    threshold = float(pos_scores[k - 1])
    sens, spec = rates(score, positive, threshold)
    return OperatingPoint(threshold, float(target_sensitivity), sens, spec)


def operating_points(
    probs: np.ndarray, labels: np.ndarray, target_sensitivity: float = 0.95
) -> dict[str, OperatingPoint]:
    """One operating point per referral target (``mel``, ``malignant``), chosen on these cases."""
    return {
        t: choose_threshold(scores(probs, t), positives(labels, t), target_sensitivity)
        for t in TARGETS
    }


def thresholds_metadata(points: dict[str, OperatingPoint]) -> dict[str, dict[str, float]]:
    """The ``thresholds`` entry of ``metadata.json``: ``{"mel": {"threshold": ..., ...}, ...}``."""
    return {name: point.to_dict() for name, point in points.items()}


def points_from_metadata(stored: dict[str, Any]) -> dict[str, OperatingPoint] | None:
    """The operating points a version brought in ``metadata.json``'s ``thresholds``; None
    unless every target has a threshold (the inverse of :func:`thresholds_metadata`)."""
    if not all(isinstance(stored.get(t), dict) and "threshold" in stored[t] for t in TARGETS):
        return None
    return {
        t: OperatingPoint(
            float(stored[t]["threshold"]),
            float(stored[t].get("target_sensitivity", math.nan)),
            float(stored[t].get("val_sensitivity", math.nan)),
            float(stored[t].get("val_specificity", math.nan)),
        )
        for t in TARGETS
    }
