"""Live performance from feedback: pure functions over ``(top_class, refer, diagnosis)`` rows.

The predicted class is the one the clinician saw (``top_class``, after the body-location
rules); the truth is the latest confirmed diagnosis. Sensitivity of a class is the share of
its confirmed cases predicted as it; balanced accuracy is their mean over the classes that
have confirmed cases (:func:`contracts.metrics.metrics_from_confusion`, the definition that
training and evaluation use). Referral rate is over all predictions that gave referral advice;
referral sensitivity over confirmed malignant cases (akiec, bcc, mel) that did. Answers without
advice (``refer`` None: the version had no validated thresholds) count as neither.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np

from contracts.labels import CLASS_INDEX, CLASSES, MALIGNANT, NUM_CLASSES
from contracts.metadata import VersionMetadata
from contracts.metrics import confusion_matrix, metrics_from_confusion


class Outcome(NamedTuple):
    top_class: str
    refer: bool | None  # None: no referral advice (the version had no validated thresholds)
    diagnosis: str | None  # None until feedback arrives


def referral_rate(refers: Iterable[bool | None]) -> dict[str, Any]:
    """Share referred among the answers that gave referral advice (None: no advice, skipped).

    Returns:
        ``{"value": rate or None, "cases": answers with advice}``.
    """
    advised = [r for r in refers if r is not None]
    return _rate(sum(advised), len(advised))


def _rate(hits: int, cases: int) -> dict[str, Any]:
    return {"value": round(hits / cases, 6) if cases else None, "cases": cases}


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def live_metrics(rows: Iterable[Outcome]) -> dict[str, Any]:
    """Counts, per-class sensitivity, balanced accuracy, referral rate and sensitivity."""
    rows = list(rows)
    confirmed = [r for r in rows if r.diagnosis is not None]
    cm = confusion_matrix(
        [CLASS_INDEX[str(r.diagnosis)] for r in confirmed],
        [CLASS_INDEX[r.top_class] for r in confirmed],
        NUM_CLASSES,
    )
    figures = metrics_from_confusion(cm)
    hits, cases = np.diag(cm), cm.sum(axis=1)
    malignant = [r for r in confirmed if r.diagnosis in MALIGNANT]
    return {
        "predictions": len(rows),
        "confirmed": len(confirmed),
        "referral_rate": referral_rate(r.refer for r in rows)["value"],
        "sensitivity": {c: _rate(int(hits[i]), int(cases[i])) for i, c in enumerate(CLASSES)},
        "balanced_accuracy": _rounded(figures["balanced_accuracy"]),
        "accuracy": _rounded(figures["accuracy"]),
        "referral_sensitivity": referral_rate(r.refer for r in malignant),
    }


def iso_week(when: datetime) -> str:
    """``2026-W48``: the ISO 8601 week of a timestamp."""
    year, week, _ = when.isocalendar()
    return f"{year}-W{week:02d}"


def by_version_and_week(
    rows: Iterable[tuple[str, datetime, Outcome]],
) -> dict[str, dict[str, Any]]:
    """``{model_version: {"overall": metrics, "weeks": {week: metrics}}}`` from
    ``(model_version, created_at, outcome)`` rows; weeks in order."""
    grouped: dict[str, dict[str, list[Outcome]]] = {}
    for version, created_at, outcome in rows:
        grouped.setdefault(version, {}).setdefault(iso_week(created_at), []).append(outcome)
    return {
        version: {
            "overall": live_metrics(r for week in weeks.values() for r in week),
            "weeks": {w: live_metrics(weeks[w]) for w in sorted(weeks)},
        }
        for version, weeks in grouped.items()
    }


def validation_figures(metadata: VersionMetadata | None) -> dict[str, Any]:
    """What ``metadata.json`` says the version scored before it shipped (None: nothing)."""
    metrics = metadata.metrics if metadata is not None else {}
    return {
        "metrics": {k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))},
        "balanced_accuracy": metrics.get("val/balanced_accuracy"),
        "sensitivity": {
            c: metrics[f"val/sensitivity_{c}"] for c in CLASSES if f"val/sensitivity_{c}" in metrics
        },
        "thresholds": metadata.thresholds if metadata is not None else {},
    }
