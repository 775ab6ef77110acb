"""Queries, each ``fn(session, ...)`` run by ``Database.run`` inside one transaction.

They return plain data, never ORM objects, so nothing lazy-loads after the session closes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from serving.db.tables import Feedback, FeedbackEvent, Prediction, utcnow


def as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; everything here is stored in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class FeedbackRecord:
    prediction_id: str
    diagnosis: str
    confirmation: str
    revision: int
    created_at: datetime
    updated_at: datetime
    changed: bool  # False when the same feedback was already the latest


def _record(row: Feedback, changed: bool) -> FeedbackRecord:
    return FeedbackRecord(
        row.prediction_id,
        row.diagnosis,
        row.confirmation,
        row.revision,
        as_utc(row.created_at),
        as_utc(row.updated_at),
        changed,
    )


def add_prediction(session: Session, row: Prediction) -> None:
    """Insert a prediction; a repeated (client_id, request_id) raises ``IntegrityError``."""
    session.add(row)
    session.flush()


def find_request(
    session: Session, client: str, request_id: str
) -> tuple[str, dict[str, Any]] | None:
    """``(fingerprint, answer)`` of the prediction stored for this client request id."""
    row = session.execute(
        select(Prediction.request_fingerprint, Prediction.answer).where(
            Prediction.client_id == client, Prediction.request_id == request_id
        )
    ).one_or_none()
    return (row[0], row[1]) if row else None


def get_prediction(
    session: Session, prediction_id: str
) -> tuple[dict[str, Any], FeedbackRecord | None] | None:
    """The stored answer of a prediction and its latest feedback, or None."""
    answer = session.scalar(select(Prediction.answer).where(Prediction.id == prediction_id))
    if answer is None:
        return None
    feedback = session.get(Feedback, prediction_id)
    return answer, _record(feedback, False) if feedback else None


def record_feedback(
    session: Session, prediction_id: str, diagnosis: str, confirmation: str, client: str
) -> FeedbackRecord | None:
    """Store feedback: the same as the latest changes nothing, a different one becomes the
    latest and joins the audit trail. None when the prediction does not exist."""
    if session.scalar(select(Prediction.id).where(Prediction.id == prediction_id)) is None:
        return None
    current = session.get(Feedback, prediction_id, with_for_update=True)
    if current is not None and (current.diagnosis, current.confirmation) == (
        diagnosis,
        confirmation,
    ):
        return _record(current, changed=False)
    now = utcnow()
    if current is None:
        current = Feedback(prediction_id=prediction_id, revision=1, created_at=now)
        session.add(current)
    else:
        current.revision += 1
    current.diagnosis, current.confirmation = diagnosis, confirmation
    current.client_id, current.updated_at = client, now
    session.add(
        FeedbackEvent(
            prediction_id=prediction_id,
            revision=current.revision,
            diagnosis=diagnosis,
            confirmation=confirmation,
            client_id=client,
            received_at=now,
        )
    )
    session.flush()
    return _record(current, changed=True)


def feedback_history(session: Session, prediction_id: str) -> list[dict[str, Any]]:
    """The audit trail of a prediction's feedback, oldest first."""
    rows = session.scalars(
        select(FeedbackEvent)
        .where(FeedbackEvent.prediction_id == prediction_id)
        .order_by(FeedbackEvent.id)
    )
    return [
        {
            "revision": r.revision,
            "diagnosis": r.diagnosis,
            "confirmation": r.confirmation,
            "client_id": r.client_id,
            "received_at": as_utc(r.received_at),
        }
        for r in rows
    ]
