"""The referral decision: a pure function of probabilities and thresholds.

A version without validated thresholds gets no decision at all (:func:`no_advice`): the
gateway never refers on a threshold nobody chose at the promised operating point. Otherwise,
refer when P(malignant group = akiec + bcc + mel) or P(mel) reaches its threshold. Each score
is the larger of the model's own probability and the one after the body-location rules:
the thresholds were chosen on the model's raw outputs (training.evaluation.thresholds), and
the rules, which only remove benign classes unless told otherwise, can only raise the
scores. Taking the larger keeps the validated operating point and never lets a rule
talk a referral away.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from contracts.labels import CLASSES, MALIGNANT, MELANOMA

_LABELS = {"malignant": "P(malignant: akiec+bcc+mel)", "mel": "P(melanoma)"}


@dataclass(frozen=True)
class Referral:
    """A referral decision, or none.

    Args:
        refer: refer to a dermatologist; None: no advice (no validated thresholds).
        scores: target -> score (the larger of before and after the rules).
        thresholds: target -> threshold; empty without advice.
        reason: one sentence that says why.
    """

    refer: bool | None
    scores: dict[str, float]
    thresholds: dict[str, float]
    reason: str


def _scores(probs: Mapping[str, float]) -> dict[str, float]:
    return {
        "malignant": sum(probs.get(c, 0.0) for c in MALIGNANT),
        "mel": probs.get(MELANOMA, 0.0),
    }


def scores(raw: Iterable[float], after_rules: Mapping[str, float]) -> dict[str, float]:
    """P(malignant group) and P(mel), each the larger of before and after the rules.

    Args:
        raw: the model's probabilities in ``CLASSES`` order.
        after_rules: class -> probability after the rules (excluded classes absent).
    """
    before = _scores(dict(zip(CLASSES, map(float, raw), strict=True)))
    after = _scores(after_rules)
    return {t: round(max(before[t], after[t]), 6) for t in ("malignant", "mel")}


def decide(
    raw: Iterable[float], after_rules: Mapping[str, float], thresholds: Mapping[str, float]
) -> Referral:
    """Refer or not, with the scores, thresholds and a sentence that says why.

    Args:
        raw: the model's probabilities in ``CLASSES`` order.
        after_rules: class -> probability after the rules (excluded classes absent).
        thresholds: ``{"malignant": t, "mel": t}``; refer when a score is >= its threshold.
    """
    found = scores(raw, after_rules)
    hits = [t for t in found if found[t] >= thresholds[t]]
    if hits:
        reason = "; ".join(
            f"{_LABELS[t]} = {found[t]:.3f} >= threshold {thresholds[t]:.3f}" for t in hits
        )
        reason = f"refer to a dermatologist: {reason}"
    else:
        parts = [f"{_LABELS[t]} = {found[t]:.3f} < {thresholds[t]:.3f}" for t in found]
        reason = "below the referral thresholds: " + "; ".join(parts)
    return Referral(bool(hits), found, dict(thresholds), reason)


def no_advice(raw: Iterable[float], after_rules: Mapping[str, float], reason: str) -> Referral:
    """No referral decision: ``refer`` None, no thresholds, the scores for the record.

    Args:
        raw: the model's probabilities in ``CLASSES`` order.
        after_rules: class -> probability after the rules (excluded classes absent).
        reason: why there is no advice (``ServedModel.no_advice``).
    """
    return Referral(None, scores(raw, after_rules), {}, reason)
