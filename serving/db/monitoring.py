"""Queries for monitoring: recent predictions with their latest feedback, as plain rows; the
capture baselines; refusals per day.

Drift windows and baselines read the ``predictions`` table only: a refused upload
(``refusals``) is never in them, it counts in :func:`refusal_rates`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from contracts.labels import CLASSES
from serving.db import crud
from serving.db.crud import as_utc
from serving.db.tables import CaptureBaseline, Feedback, Prediction

# Drift features (names of training.reference_stats) -> Observation attribute.
FEATURES = {
    "body_site": "body_location",
    "predicted_class": "predicted_class",
    "brightness": "brightness",
    "contrast": "contrast",
    "image_width": "width",
    "image_height": "height",
    "image_aspect": "aspect",
    "image_format": "image_format",
    "diagnosis": "diagnosis",
}


@dataclass(frozen=True)
class Observation:
    """One prediction as monitoring sees it."""

    created_at: datetime
    model_version: str
    body_location: str
    width: int
    height: int
    image_format: str
    brightness: float
    contrast: float
    predicted_class: str  # the model's argmax, before the rules
    top_class: str  # after the rules: what the clinician saw
    refer: bool | None  # None: no referral advice was given
    diagnosis: str | None  # latest confirmed diagnosis, None without feedback

    @property
    def aspect(self) -> float:
        """Width / height of the photo as uploaded."""
        return self.width / self.height if self.height else 0.0


def recent(
    session: Session, limit: int, since: datetime | None = None, model_version: str | None = None
) -> list[Observation]:
    """The newest ``limit`` predictions (of ``model_version`` if given), created at or after
    ``since`` if given; newest first."""
    query = (
        select(
            Prediction.created_at,
            Prediction.model_version,
            Prediction.body_location,
            Prediction.image_width,
            Prediction.image_height,
            Prediction.image_format,
            Prediction.image_brightness,
            Prediction.image_contrast,
            Prediction.probabilities,
            Prediction.top_class,
            Prediction.refer,
            Feedback.diagnosis,
        )
        .outerjoin(Feedback, Feedback.prediction_id == Prediction.id)
        .order_by(Prediction.created_at.desc(), Prediction.id)
        .limit(limit)
    )
    if since is not None:
        query = query.where(Prediction.created_at >= since)
    if model_version is not None:
        query = query.where(Prediction.model_version == model_version)
    return [
        Observation(
            as_utc(r[0]),
            *r[1:8],
            _top_class(r[8]),
            r[9],
            r[10],
            r[11],
        )
        for r in session.execute(query)
    ]


def _top_class(probabilities: dict[str, float]) -> str:
    return max(CLASSES, key=lambda c: probabilities.get(c, 0.0))


def window_values(rows: list[Observation], model_version: str | None) -> dict[str, Sequence[Any]]:
    """Feature -> values for ``contracts.drift.drift_report``.

    The predicted class depends on the model: only ``model_version``'s predictions count for
    it. The diagnosis counts only where feedback arrived.
    """
    values: dict[str, Sequence[Any]] = {
        name: [getattr(r, attr) for r in rows] for name, attr in FEATURES.items()
    }
    values["predicted_class"] = [
        r.predicted_class for r in rows if model_version is None or r.model_version == model_version
    ]
    values["diagnosis"] = [r.diagnosis for r in rows if r.diagnosis is not None]
    return values


@dataclass(frozen=True)
class CaptureTraffic:
    """The capture features of the predictions since a date (what a baseline is frozen from)."""

    values: dict[str, list[Any]]  # contracts.drift.CAPTURE_FEATURES -> one value per prediction
    records: int
    oldest: datetime | None
    newest: datetime | None


def capture_traffic(session: Session, since: datetime | None) -> CaptureTraffic:
    """Width, height, aspect and format of every prediction created at or after ``since``
    (all when None). Predictions only: refused uploads are not traffic to freeze."""
    query = select(
        Prediction.created_at, Prediction.image_width, Prediction.image_height,
        Prediction.image_format,
    )  # fmt: skip
    if since is not None:
        query = query.where(Prediction.created_at >= since)
    rows = session.execute(query).all()
    values: dict[str, list[Any]] = {
        "image_width": [r[1] for r in rows],
        "image_height": [r[2] for r in rows],
        "image_aspect": [r[1] / r[2] if r[2] else 0.0 for r in rows],
        "image_format": [r[3] for r in rows],
    }
    times = [as_utc(r[0]) for r in rows]
    return CaptureTraffic(values, len(rows), min(times, default=None), max(times, default=None))


def baseline_summary(row: CaptureBaseline) -> dict[str, Any]:
    """A baseline as the API shows it (without its histograms)."""
    return {
        "id": row.id,
        "frozen_at": as_utc(row.frozen_at),
        "frozen_by": row.frozen_by,
        "since": as_utc(row.since) if row.since is not None else None,
        "oldest": as_utc(row.oldest),
        "newest": as_utc(row.newest),
        "records": row.records,
        "features": sorted(row.features),
    }


def add_baseline(session: Session, row: CaptureBaseline) -> dict[str, Any]:
    """Store a newly frozen baseline; its summary."""
    session.add(row)
    session.flush()
    return baseline_summary(row)


def current_baseline(session: Session) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(summary, features)`` of the baseline in force (the newest frozen), or None."""
    row = session.scalars(
        select(CaptureBaseline)
        .order_by(CaptureBaseline.frozen_at.desc(), CaptureBaseline.id.desc())
        .limit(1)
    ).first()
    return None if row is None else (baseline_summary(row), row.features)


def baseline_history(session: Session, limit: int) -> list[dict[str, Any]]:
    """Summaries of the newest ``limit`` baselines, newest first."""
    rows = session.scalars(
        select(CaptureBaseline)
        .order_by(CaptureBaseline.frozen_at.desc(), CaptureBaseline.id.desc())
        .limit(limit)
    )
    return [baseline_summary(r) for r in rows]


def _per_day(column: Any, starts: list[datetime]) -> list[ColumnElement[Any]]:
    """One ``sum(case ...)`` per day: rows with ``column`` in ``[start, start + 1 day)``;
    portable (SQLite and PostgreSQL), one query for all days."""
    return [
        func.coalesce(
            func.sum(case(((column >= s) & (column < s + timedelta(days=1)), 1), else_=0)), 0
        )
        for s in starts
    ]


def _rate(refusals: int, predictions: int) -> float | None:
    total = refusals + predictions
    return round(refusals / total, 6) if total else None


def refusal_rates(session: Session, days: int, now: datetime) -> dict[str, Any]:
    """Per UTC day of the last ``days`` (today the last): predictions, refused uploads
    (``crud.refusals_per_day``), the refusal rate ``refusals / (refusals + predictions)``
    (None on a day without uploads) and the refusals per reason; oldest day first, every day
    listed. The same over all days as ``total``."""
    refused = crud.refusals_per_day(session, days, now)
    starts = [datetime.combine(r["day"], time(), tzinfo=UTC) for r in refused]
    since, until = starts[0], starts[-1] + timedelta(days=1)
    predicted = session.execute(
        select(*_per_day(Prediction.created_at, starts)).where(
            (Prediction.created_at >= since) & (Prediction.created_at < until)
        )
    ).one()
    points: list[dict[str, Any]] = []
    by_reason: dict[str, int] = {}
    for start, day, predictions in zip(starts, refused, predicted, strict=True):
        for reason, n in day["reasons"].items():
            by_reason[reason] = by_reason.get(reason, 0) + n
        points.append(
            {
                "day": start.date().isoformat(),
                "predictions": int(predictions),
                "refusals": day["total"],
                "rate": _rate(day["total"], int(predictions)),
                "by_reason": day["reasons"],
            }
        )
    refusals = sum(p["refusals"] for p in points)
    predictions_total = sum(p["predictions"] for p in points)
    return {
        "days": days,
        "since": since,
        "until": until,
        "per_day": points,
        "total": {
            "predictions": predictions_total,
            "refusals": refusals,
            "rate": _rate(refusals, predictions_total),
            "by_reason": dict(sorted(by_reason.items())),
        },
    }
