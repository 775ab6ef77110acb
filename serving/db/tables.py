"""Tables: predictions (with the stored answer), current feedback, and its audit trail;
refused uploads; the capture baselines of the drift monitoring.

The schema itself is created by Alembic (serving/migrations), never by ``create_all``.
Idempotent retries rest on the unique (client_id, request_id) pair of ``predictions``: a
retried upload inserts nothing new, it finds the first record and sends its stored answer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so migrations can refer to them on every database.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Prediction(Base):
    """One answered upload. ``answer`` is the JSON sent to the client, kept verbatim."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("client_id", "request_id", name="uq_predictions_request"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
    client_id: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(200))
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(32))
    body_location: Mapped[str] = mapped_column(String(32))
    age: Mapped[int | None] = mapped_column(Integer)
    sex: Mapped[str] = mapped_column(String(16))
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    image_format: Mapped[str] = mapped_column(String(8))
    image_width: Mapped[int] = mapped_column(Integer)
    image_height: Mapped[int] = mapped_column(Integer)
    image_brightness: Mapped[float] = mapped_column(Float)
    image_contrast: Mapped[float] = mapped_column(Float)
    image_stored: Mapped[bool] = mapped_column(Boolean)
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)  # the model's, before rules
    top_class: Mapped[str] = mapped_column(String(16))  # after rules
    # None: no referral advice (the version had no validated thresholds); migration 0002.
    refer: Mapped[bool | None] = mapped_column(Boolean)
    answer: Mapped[dict[str, Any]] = mapped_column(JSON)


class Feedback(Base):
    """The latest confirmed diagnosis of a prediction (one row per prediction)."""

    __tablename__ = "feedback"

    prediction_id: Mapped[str] = mapped_column(
        ForeignKey("predictions.id", ondelete="CASCADE"), primary_key=True
    )
    diagnosis: Mapped[str] = mapped_column(String(16))
    confirmation: Mapped[str] = mapped_column(String(16))
    client_id: Mapped[str] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FeedbackEvent(Base):
    """Audit trail: every distinct feedback a prediction received, in order."""

    __tablename__ = "feedback_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prediction_id: Mapped[str] = mapped_column(
        ForeignKey("predictions.id", ondelete="CASCADE"), index=True
    )
    revision: Mapped[int] = mapped_column(Integer)
    diagnosis: Mapped[str] = mapped_column(String(16))
    confirmation: Mapped[str] = mapped_column(String(16))
    client_id: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Refusal(Base):
    """An upload the gate refused to diagnose (``contracts.quality``): counted, never in the
    drift windows. The image is kept only with consent, like a prediction's; migration 0003.

    ``mode`` is how it was answered: ``reject`` (422) or ``flag`` (201, ranking withheld).
    """

    __tablename__ = "refusals"
    __table_args__ = (UniqueConstraint("client_id", "request_id", name="uq_refusals_request"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
    client_id: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(200))
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32), index=True)
    message: Mapped[str] = mapped_column(String(1000))
    mode: Mapped[str] = mapped_column(String(8))
    model_name: Mapped[str | None] = mapped_column(String(200))
    model_version: Mapped[str | None] = mapped_column(String(32))
    ood_score: Mapped[float | None] = mapped_column(Float)
    features: Mapped[dict[str, float] | None] = mapped_column(JSON)  # contracts.quality
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    image_format: Mapped[str | None] = mapped_column(String(8))
    image_width: Mapped[int | None] = mapped_column(Integer)
    image_height: Mapped[int | None] = mapped_column(Integer)
    image_stored: Mapped[bool] = mapped_column(Boolean, default=False)
    answer: Mapped[dict[str, Any]] = mapped_column(JSON)  # what the client was sent


class CaptureBaseline(Base):
    """A baseline of the capture features (``contracts.drift.CAPTURE_FEATURES``) frozen by the
    operator from live predictions (``python -m serving.monitoring freeze-baseline``); the
    newest one is in force. Every freeze adds a row, none is ever replaced; migration 0004.
    """

    __tablename__ = "capture_baselines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    frozen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    frozen_by: Mapped[str] = mapped_column(String(64))  # "cli" or the API client's id
    since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # None: all traffic
    oldest: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # of the predictions read
    newest: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    records: Mapped[int] = mapped_column(Integer)
    features: Mapped[dict[str, Any]] = mapped_column(JSON)  # contracts.drift.capture_baseline
