"""The refusals table on real SQLite files and a real PostgreSQL server: migration 0003, the
queries the gateway and the monitoring page use, and nothing of it in ``predictions``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from serving.db import Database, crud
from serving.db.engine import alembic_config, migrating
from serving.db.tables import Refusal
from tests.serving.test_db import db, prediction  # noqa: F401 - the fixture, by import

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def refusal(
    rid: str,
    reason: str = "blurred",
    created_at: datetime = NOW,
    request_id: str | None = None,
    client: str = "c1",
    mode: str = "reject",
) -> Refusal:
    return Refusal(
        id=rid,
        created_at=created_at,
        client_id=client,
        request_id=request_id,
        request_fingerprint="a" * 64,
        reason=reason,
        message="the image is out of focus",
        mode=mode,
        model_name="skin_lesion",
        model_version="1",
        ood_score=None,
        features={"sharpness": 1.5},
        image_sha256="1" * 64,
        image_format="jpeg",
        image_width=600,
        image_height=450,
        image_stored=False,
        answer={"id": rid, "code": reason},
    )


def migrate(database: Database, action: str, target: str) -> None:
    config = alembic_config()
    with migrating(database.engine) as conn:
        config.attributes["connection"] = conn
        getattr(command, action)(config, target)


def test_0003_adds_refusals_and_keeps_every_prediction(db: Database) -> None:  # noqa: F811
    """From 0002 with records: 0003 adds the table and changes nothing existing; going back
    drops only the refusals, and forward again works."""
    migrate(db, "upgrade", "0002")
    asyncio.run(db.run(crud.add_prediction, prediction("p1", "r1", refer=None)))
    assert "refusals" not in inspect(db.engine).get_table_names()
    migrate(db, "upgrade", "0003")
    columns = {c["name"]: c for c in inspect(db.engine).get_columns("refusals")}
    assert {"reason", "message", "mode", "ood_score", "features", "image_stored", "answer"} <= set(
        columns
    )
    assert columns["image_sha256"]["nullable"] and not columns["reason"]["nullable"]
    indexes = {i["name"] for i in inspect(db.engine).get_indexes("refusals")}
    assert {"ix_refusals_created_at", "ix_refusals_reason"} <= indexes
    asyncio.run(db.run(crud.add_refusal, refusal("x1", request_id="r1")))
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM predictions")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM refusals")).scalar() == 1
    migrate(db, "downgrade", "0002")
    assert "refusals" not in inspect(db.engine).get_table_names()
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM predictions")).scalar() == 1
    db.upgrade()  # to head again
    assert "refusals" in inspect(db.engine).get_table_names()


def test_request_ids_span_predictions_and_refusals(db: Database) -> None:  # noqa: F811
    """A retry finds what its request id got, a prediction or a refusal (with its mode); a
    refusal is unique per client request id like a prediction, and never a prediction."""
    db.upgrade()

    async def scenario() -> None:
        await db.run(crud.add_prediction, prediction("p1", "r1"))
        await db.run(crud.add_refusal, refusal("x1", request_id="r2"))
        await db.run(crud.add_refusal, refusal("x2", request_id="r3", mode="flag"))
        await db.run(crud.add_refusal, refusal("x3", request_id="r2", client="c2"))
        with pytest.raises(IntegrityError):
            await db.run(crud.add_refusal, refusal("x4", request_id="r2"))
        found = await db.run(crud.find_stored, "c1", "r1")
        assert (found.refused, found.answer) == (None, {"id": "p1"})
        found = await db.run(crud.find_stored, "c1", "r2")
        assert (found.refused, found.answer, found.fingerprint) == (
            "reject",
            {"id": "x1", "code": "blurred"},
            "a" * 64,
        )
        assert (await db.run(crud.find_stored, "c1", "r3")).refused == "flag"
        assert await db.run(crud.find_stored, "c1", "nope") is None
        # A flagged refusal answered 201 can be read back; a rejected one is not a prediction.
        assert await db.run(crud.get_prediction, "x2") == ({"id": "x2", "code": "blurred"}, None)
        assert await db.run(crud.get_prediction, "x1") is None
        assert await db.run(crud.record_feedback, "x2", "mel", "histo", "c1") is None
        assert await db.run(crud.refusal_reason, "x2") == "blurred"
        assert await db.run(crud.refusal_reason, "p1") is None

    asyncio.run(scenario())
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM predictions")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM feedback")).scalar() == 0


def test_refusals_per_day_counts_reasons_per_utc_day(db: Database) -> None:  # noqa: F811
    db.upgrade()
    day = timedelta(days=1)
    rows = [
        refusal("a", "blurred", NOW),
        refusal("b", "blurred", NOW.replace(hour=0, minute=0, second=1)),
        refusal("c", "out_of_distribution", NOW.replace(hour=23, minute=59)),
        refusal("d", "too_small", NOW - 2 * day),
        refusal("e", "uniform", NOW - 3 * day),  # outside a 3-day range
        # 00:30 at UTC+2 is 22:30 UTC the day before: counted there.
        refusal("f", "uniform", datetime(2026, 3, 10, 0, 30, tzinfo=UTC) + timedelta(hours=-2)),
    ]

    async def fill() -> None:
        for row in rows:
            await db.run(crud.add_refusal, row)

    asyncio.run(fill())
    got = asyncio.run(db.run(crud.refusals_per_day, 3, NOW))
    assert got == [
        {"day": (NOW - 2 * day).date(), "total": 1, "reasons": {"too_small": 1}},
        {"day": (NOW - day).date(), "total": 1, "reasons": {"uniform": 1}},
        {"day": NOW.date(), "total": 3, "reasons": {"blurred": 2, "out_of_distribution": 1}},
    ]
    assert [d["total"] for d in asyncio.run(db.run(crud.refusals_per_day, 1, NOW))] == [3]
    with pytest.raises(ValueError, match="at least 1"):
        asyncio.run(db.run(crud.refusals_per_day, 0, NOW))
