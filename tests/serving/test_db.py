"""The database layer on real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from serving.db import Database, DatabaseUnavailable, crud
from serving.db.engine import alembic_config, migrating
from serving.db.tables import Base, Feedback, Prediction

BACKENDS = ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow])]


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'sub' / 'records.db'}"
    else:  # a fresh database per test on the session's server
        base = request.getfixturevalue("postgres_url").rsplit("/", 1)[0]
        name = f"t_{tmp_path.name.replace('-', '_').lower()[-40:]}"
        admin = Database(f"{base}/postgres")
        with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            conn.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        url = f"{base}/{name}"
    database = Database(url)
    yield database
    database.dispose()


def prediction(
    pid: str, request_id: str | None = None, client: str = "c1", refer: bool | None = False
) -> Prediction:
    return Prediction(
        id=pid,
        client_id=client,
        request_id=request_id,
        request_fingerprint="f" * 64,
        model_name="skin_lesion",
        model_version="1",
        body_location="back",
        age=None,
        sex="unknown",
        image_sha256="0" * 64,
        image_format="jpeg",
        image_width=600,
        image_height=450,
        image_brightness=120.0,
        image_contrast=30.0,
        image_stored=False,
        probabilities={"nv": 1.0},
        top_class="nv",
        refer=refer,
        answer={"id": pid},
    )


def test_migrations_build_exactly_the_models(db: Database) -> None:
    db.upgrade()
    db.upgrade()  # idempotent
    tables = set(inspect(db.engine).get_table_names())
    assert {"predictions", "feedback", "feedback_events", "alembic_version"} <= tables
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_0002_lets_refer_be_null_and_keeps_records_and_feedback(db: Database) -> None:
    """A database made by 0001 with records and feedback: 0002 keeps every row (SQLite
    rebuilds the table, which must not cascade into the feedback), then stores answers
    without referral advice; going back to 0001 refuses while such answers exist."""
    config = alembic_config()

    def migrate(action: str, target: str) -> None:
        with migrating(db.engine) as conn:
            config.attributes["connection"] = conn
            getattr(command, action)(config, target)

    migrate("upgrade", "0001")

    async def before() -> None:
        await db.run(crud.add_prediction, prediction("p1", refer=True))
        await db.run(crud.record_feedback, "p1", "mel", "histo", "c1")

    asyncio.run(before())
    db.upgrade()
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert conn.execute(text("SELECT count(*) FROM feedback")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM feedback_events")).scalar() == 1
    if db.engine.url.get_backend_name() == "sqlite":
        with db.engine.connect() as conn:  # enforcement is back on after the migration
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1

    async def after() -> None:
        await db.run(crud.add_prediction, prediction("p2", refer=None))
        stored, latest = await db.run(crud.get_prediction, "p1")
        assert stored == {"id": "p1"} and latest.diagnosis == "mel"

    asyncio.run(after())
    with db.sessions.begin() as s:
        assert {p.id: p.refer for p in s.query(Prediction)} == {"p1": True, "p2": None}
    with pytest.raises(RuntimeError, match="without referral advice"):
        migrate("downgrade", "0001")
    with db.engine.connect() as conn:  # refused and rolled back: still at head, nothing lost
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"
        assert conn.execute(text("SELECT count(*) FROM predictions")).scalar() == 2


def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'a' / 'b.db'}")
    db.upgrade()
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000
    with pytest.raises(IntegrityError), db.sessions.begin() as s:  # feedback needs a prediction
        s.add(Feedback(prediction_id="nope", diagnosis="mel", confirmation="histo", client_id="c"))
    db.dispose()


def test_concurrent_startups_migrate_once(db: Database) -> None:
    # Gateway replicas starting together: separate processes, one migrates, the others wait.
    url = db.engine.url.render_as_string(hide_password=False)
    code = f"from serving.db import Database; Database({url!r}).upgrade()"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM predictions")).scalar() == 0


def test_request_ids_are_unique_per_client_and_feedback_is_audited(db: Database) -> None:
    db.upgrade()

    async def scenario() -> None:
        await db.run(crud.add_prediction, prediction("p1", "r1"))
        await db.run(crud.add_prediction, prediction("p2", None))
        await db.run(crud.add_prediction, prediction("p3", None))  # NULL ids never collide
        await db.run(crud.add_prediction, prediction("p4", "r1", client="c2"))
        with pytest.raises(IntegrityError):
            await db.run(crud.add_prediction, prediction("p5", "r1"))
        assert await db.run(crud.find_request, "c1", "r1") == ("f" * 64, {"id": "p1"})
        assert await db.run(crud.get_prediction, "p5") is None
        first = await db.run(crud.record_feedback, "p1", "mel", "histo", "c1")
        same = await db.run(crud.record_feedback, "p1", "mel", "histo", "c1")
        changed = await db.run(crud.record_feedback, "p1", "bcc", "histo", "c2")
        assert (first.changed, same.changed, changed.changed) == (True, False, True)
        assert (first.revision, same.revision, changed.revision) == (1, 1, 2)
        assert await db.run(crud.record_feedback, "nope", "mel", "histo", "c1") is None
        history = await db.run(crud.feedback_history, "p1")
        assert [(h["revision"], h["diagnosis"], h["client_id"]) for h in history] == [
            (1, "mel", "c1"),
            (2, "bcc", "c2"),
        ]
        answer, latest = await db.run(crud.get_prediction, "p1")
        assert answer == {"id": "p1"} and latest.diagnosis == "bcc"
        assert latest.updated_at.tzinfo is not None

    asyncio.run(scenario())


def test_unreachable_database_is_reported_not_raised_raw() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = Database(f"postgresql+psycopg://postgres@127.0.0.1:{port}/none?connect_timeout=2")
    assert asyncio.run(db.ping()) is False
    with pytest.raises(DatabaseUnavailable, match="unavailable"):
        asyncio.run(db.run(crud.get_prediction, "x"))


def _values(row: Prediction) -> dict[str, object]:
    return {c.key: getattr(row, c.key) for c in Prediction.__table__.columns}


def test_core_insert_commits_before_it_returns_and_stores_what_the_orm_stored(
    db: Database,
) -> None:
    """``Database.insert`` (the gateway's write, SQLAlchemy Core) commits before it returns,
    stores the same values as ``session.add`` did, and refuses a repeated request id with
    IntegrityError, committing nothing."""
    db.upgrade()
    table = Prediction.__table__
    created = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)

    def row(pid: str, request_id: str | None) -> Prediction:
        made = prediction(pid, request_id)
        made.created_at = created
        made.answer = {"ranking": [{"code": "nv", "probability": 0.5}], "é": None}
        return made

    async def scenario() -> None:
        await db.run(crud.add_prediction, row("orm", "r1"))
        await db.insert(table, _values(row("core", "r2")))
        # Committed: another connection sees it at once.
        with db.engine.connect() as conn:
            stored = {
                r.id: r._asdict()
                for r in conn.execute(select(table).where(table.c.id.in_(["orm", "core"])))
            }
        assert set(stored) == {"orm", "core"}
        orm, core = stored["orm"], stored["core"]
        for key in ("id", "request_id"):
            orm.pop(key), core.pop(key)
        assert orm == core
        with pytest.raises(IntegrityError):
            await db.insert(table, _values(row("again", "r2")))
        assert await db.run(crud.get_prediction, "again") is None
        assert await db.run(crud.find_request, "c1", "r2") == ("f" * 64, core["answer"])

    asyncio.run(scenario())
