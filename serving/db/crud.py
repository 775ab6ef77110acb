"""Queries, each ``fn(session, ...)`` run by ``Database.run`` inside one transaction.

They return plain data, never ORM objects, so nothing lazy-loads after the session closes.
Refused uploads (``refusals``) are kept apart from ``predictions``: only :func:`find_stored`,
:func:`get_prediction` (a ``flag``-mode refusal's answer) and :func:`refusals_per_day` read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from serving.db.tables import Feedback, FeedbackEvent, Prediction, Refusal, utcnow


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


@dataclass(frozen=True)
class StoredAnswer:
    """What a client request id already got: a prediction's answer, or a refusal's.

    ``refused`` is None for a prediction, else the refusal's mode: ``reject`` (the answer is
    the 422 body) or ``flag`` (a 201 answer with the ranking withheld).
    """

    fingerprint: str
    answer: dict[str, Any]
    refused: str | None


def find_stored(session: Session, client: str, request_id: str) -> StoredAnswer | None:
    """The answer stored for this client request id, a prediction's or a refusal's."""
    found = find_request(session, client, request_id)
    if found is not None:
        return StoredAnswer(found[0], found[1], None)
    row = session.execute(
        select(Refusal.request_fingerprint, Refusal.answer, Refusal.mode).where(
            Refusal.client_id == client, Refusal.request_id == request_id
        )
    ).one_or_none()
    return StoredAnswer(row[0], row[1], row[2]) if row else None


def add_refusal(session: Session, row: Refusal) -> None:
    """Insert a refusal; a repeated (client_id, request_id) raises ``IntegrityError``."""
    session.add(row)
    session.flush()


def refusal_reason(session: Session, refusal_id: str) -> str | None:
    """The reason code of a refusal, or None when no refusal has this id."""
    return session.scalar(select(Refusal.reason).where(Refusal.id == refusal_id))


def refusals_per_day(
    session: Session, days: int, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Refusals per UTC day over the last ``days`` days (today included), oldest first.

    Every day of the range is listed, days without refusals too: ``{"day": date, "total": n,
    "reasons": {reason code: n}}`` (only the codes that occurred that day).
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    today = (now or utcnow()).astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, time(), tzinfo=UTC)
    counts: dict[date, dict[str, int]] = {first + timedelta(days=i): {} for i in range(days)}
    rows = session.execute(
        select(Refusal.created_at, Refusal.reason).where(Refusal.created_at >= since)
    )
    for created_at, reason in rows:
        day = counts.get(as_utc(created_at).astimezone(UTC).date())
        if day is not None:  # (a clock ahead of ``now``: not a day of this range)
            day[reason] = day.get(reason, 0) + 1
    return [
        {"day": day, "total": sum(reasons.values()), "reasons": dict(sorted(reasons.items()))}
        for day, reasons in counts.items()
    ]


def get_prediction(
    session: Session, prediction_id: str
) -> tuple[dict[str, Any], FeedbackRecord | None] | None:
    """The stored answer of a prediction and its latest feedback, or None.

    A refusal answered in ``flag`` mode (201, the ranking withheld) is found too, without
    feedback: its answer has the shape of a prediction's.
    """
    answer = session.scalar(select(Prediction.answer).where(Prediction.id == prediction_id))
    if answer is None:
        flagged = session.scalar(
            select(Refusal.answer).where(Refusal.id == prediction_id, Refusal.mode == "flag")
        )
        return (flagged, None) if flagged is not None else None
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
