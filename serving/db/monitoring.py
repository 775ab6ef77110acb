"""Queries for monitoring: recent predictions with their latest feedback, as plain rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from contracts.labels import CLASSES
from serving.db.crud import as_utc
from serving.db.tables import Feedback, Prediction

# Drift features (names of training.reference_stats) -> Observation attribute.
FEATURES = {
    "body_site": "body_location",
    "predicted_class": "predicted_class",
    "brightness": "brightness",
    "contrast": "contrast",
    "image_width": "width",
    "image_height": "height",
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
    brightness: float
    contrast: float
    predicted_class: str  # the model's argmax, before the rules
    top_class: str  # after the rules: what the clinician saw
    refer: bool | None  # None: no referral advice was given
    diagnosis: str | None  # latest confirmed diagnosis, None without feedback


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
            *r[1:7],
            _top_class(r[7]),
            r[8],
            r[9],
            r[10],
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
