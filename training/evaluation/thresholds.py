"""Operating points: the threshold on a score that reaches a target sensitivity, with confidence.

Chosen on the validation split, reported on the test split, stored in the exported model's
``metadata.json`` under ``thresholds`` for the gateway's referral. A case is referred when its
score is *at or above* the threshold.

The rule (``RULE``): the highest threshold whose validation sensitivity has a one-sided
Clopper-Pearson lower confidence bound (at ``confidence``, 0.95 by default) of at least the
target. A threshold that only *hits* the target on the validation cases misses it on new cases
about half the time (the validation sensitivity is an estimate from a few hundred positives);
requiring the lower bound to reach it makes the target hold on new data with that confidence.
The price is paid in specificity, and the report shows it. ``confidence=None`` gives the plain
rule (the target hit exactly on validation), kept for comparison.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import beta

from contracts.errors import DataError
from contracts.labels import CLASS_INDEX, CLASSES, MALIGNANT, MELANOMA

MALIGNANT_INDICES: tuple[int, ...] = tuple(CLASS_INDEX[c] for c in CLASSES if c in MALIGNANT)
# The two referral scores: P(mel), and the summed probability of the malignant group.
TARGETS: tuple[str, ...] = ("mel", "malignant")
RULE = "clopper_pearson_lower_bound"
EXACT_RULE = "validation_sensitivity"
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold and what it achieved on the split it was chosen on.

    ``val_*`` names match the ``metadata.json`` structure the gateway reads.
    """

    threshold: float
    target_sensitivity: float
    val_sensitivity: float
    val_specificity: float
    rule: str = EXACT_RULE
    confidence: float | None = None
    val_positives: int | None = None
    val_sensitivity_lower_bound: float | None = None

    def to_dict(self) -> dict[str, Any]:
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


def sensitivity_lower_bound(caught: int, positives: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower bound of a sensitivity of ``caught / positives``."""
    if caught <= 0:
        return 0.0
    return float(beta.ppf(1.0 - confidence, caught, positives - caught + 1))


def choose_threshold(
    score: np.ndarray,
    positive: np.ndarray,
    target_sensitivity: float = 0.95,
    confidence: float | None = DEFAULT_CONFIDENCE,
) -> OperatingPoint:
    """The highest threshold that reaches ``target_sensitivity`` by the module's rule.

    The highest such threshold is the one that costs the least specificity. It is the k-th
    highest positive score, so at least k positives are referred: with ``confidence``, the
    smallest k whose lower confidence bound of k / positives reaches the target (all positives
    when even that is not enough: ``val_sensitivity_lower_bound`` then says by how much it
    falls short); without, k = ceil(target * positives).

    Raises:
        DataError: no positive cases (the threshold would be meaningless).
        ValueError: a target or confidence outside (0, 1].
    """
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    if confidence is not None and not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    score = np.asarray(score, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    pos_scores = np.sort(score[positive])[::-1]
    n = int(pos_scores.size)
    if n == 0:
        raise DataError(
            "no positive cases to choose a threshold on: the split needs melanomas (and "
            "malignant lesions); use a larger validation split"
        )
    # The 1e-9 keeps 0.95 * 20 = 19.000000000000004 from becoming 20.
    k = max(1, math.ceil(target_sensitivity * n - 1e-9))
    if confidence is not None:
        k = next(
            (
                j
                for j in range(k, n + 1)
                if sensitivity_lower_bound(j, n, confidence) >= target_sensitivity
            ),
            n,
        )
    threshold = float(pos_scores[k - 1])
    sens, spec = rates(score, positive, threshold)
    caught = int(((score >= threshold) & positive).sum())
    return OperatingPoint(
        threshold,
        float(target_sensitivity),
        sens,
        spec,
        rule=EXACT_RULE if confidence is None else RULE,
        confidence=confidence,
        val_positives=n,
        val_sensitivity_lower_bound=(
            None if confidence is None else sensitivity_lower_bound(caught, n, confidence)
        ),
    )


def operating_points(
    probs: np.ndarray,
    labels: np.ndarray,
    target_sensitivity: float = 0.95,
    confidence: float | None = DEFAULT_CONFIDENCE,
) -> dict[str, OperatingPoint]:
    """One operating point per referral target (``mel``, ``malignant``), chosen on these cases."""
    return {
        t: choose_threshold(scores(probs, t), positives(labels, t), target_sensitivity, confidence)
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
            rule=str(stored[t].get("rule", EXACT_RULE)),
            confidence=stored[t].get("confidence"),
            val_positives=stored[t].get("val_positives"),
            val_sensitivity_lower_bound=stored[t].get("val_sensitivity_lower_bound"),
        )
        for t in TARGETS
    }
