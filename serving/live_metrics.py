"""Live performance from feedback: pure functions over ``(top_class, refer, diagnosis)`` rows.

The predicted class is the one the clinician saw (``top_class``, after the body-location
rules); the truth is the latest confirmed diagnosis. Sensitivity of a class is the share of
its confirmed cases predicted as it; balanced accuracy is their mean over the classes that
have confirmed cases (as scikit-learn's ``balanced_accuracy_score``). Referral rate is over
all predictions; referral sensitivity over confirmed malignant cases (akiec, bcc, mel).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, NamedTuple

from contracts.labels import CLASSES, MALIGNANT


class Outcome(NamedTuple):
    top_class: str
    refer: bool
    diagnosis: str | None  # None until feedback arrives


def _rate(hits: int, cases: int) -> dict[str, Any]:
    return {"value": round(hits / cases, 6) if cases else None, "cases": cases}


def live_metrics(rows: Iterable[Outcome]) -> dict[str, Any]:
    """Counts, per-class sensitivity, balanced accuracy, referral rate and sensitivity."""
    rows = list(rows)
    confirmed = [r for r in rows if r.diagnosis is not None]
    sensitivity = {
        c: _rate(
            sum(r.top_class == c for r in confirmed if r.diagnosis == c),
            sum(r.diagnosis == c for r in confirmed),
        )
        for c in CLASSES
    }
    seen = [s["value"] for s in sensitivity.values() if s["cases"]]
    malignant = [r for r in confirmed if r.diagnosis in MALIGNANT]
    return {
        "predictions": len(rows),
        "confirmed": len(confirmed),
        "referral_rate": _rate(sum(r.refer for r in rows), len(rows))["value"],
        "sensitivity": sensitivity,
        "balanced_accuracy": round(sum(seen) / len(seen), 6) if seen else None,
        "accuracy": _rate(sum(r.top_class == r.diagnosis for r in confirmed), len(confirmed))[
            "value"
        ],
        "referral_sensitivity": _rate(sum(r.refer for r in malignant), len(malignant)),
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


def validation_figures(metadata: dict[str, Any]) -> dict[str, Any]:
    """What ``metadata.json`` says the version scored before it shipped."""
    metrics = metadata.get("metrics") or {}
    return {
        "metrics": {k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))},
        "balanced_accuracy": metrics.get("val/balanced_accuracy"),
        "sensitivity": {
            c: metrics[f"val/sensitivity_{c}"] for c in CLASSES if f"val/sensitivity_{c}" in metrics
        },
        "thresholds": metadata.get("thresholds") or {},
    }
