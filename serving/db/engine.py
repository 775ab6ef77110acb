"""Engines, migrations and the async-facing :class:`Database`.

One choice, used everywhere: SQLAlchemy's SYNC engine, called from async code in a worker
thread (``anyio.to_thread``). SQLite (default, WAL mode) and PostgreSQL (psycopg 3,
``postgresql+psycopg://``) both go through it. Each call runs in one transaction that commits
before the call returns, so an answer sent after ``await db.run(...)`` has its record.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, Insert, Table, create_engine, event, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import sessionmaker

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
T = TypeVar("T")
_MIGRATING = threading.Lock()  # Alembic's context is process-global: one migration at a time


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or is locked; the caller answers 503."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite would open a transaction only at the first write, so a read-then-write (feedback:
    # read the latest, then change it) could interleave with another and both write. SQLAlchemy
    # begins each transaction instead (``_sqlite_begin``).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer; NORMAL sync is durable across app crashes in WAL.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # IMMEDIATE: the write lock from the start, so concurrent read-then-write transactions
    # queue (busy_timeout) instead of both acting on what they read.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout, PostgreSQL pre-pinging."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 5})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_timeout=5)


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config that finds the migrations inside the installed package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: Engine) -> None:
    """``alembic upgrade head`` on ``engine``, safe when several gateways start at once.

    PostgreSQL serialises through an advisory lock (in migrations/env.py); SQLite files
    through a file lock beside the database; threads of one process through a lock.
    """
    config = alembic_config()
    database = engine.url.database
    lock_path = (
        Path(f"{database}.migrate.lock")
        if engine.url.get_backend_name() == "sqlite" and database and database != ":memory:"
        else None
    )
    with _MIGRATING, open(lock_path or "/dev/null", "a") as lock:
        if lock_path:
            fcntl.flock(lock, fcntl.LOCK_EX)
        with migrating(engine) as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")


def _sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    # On the driver's connection, outside any transaction (inside one SQLite ignores it).
    connection.connection.driver_connection.execute(  # type: ignore[union-attr]
        f"PRAGMA foreign_keys={'ON' if on else 'OFF'}"
    )


@contextlib.contextmanager
def migrating(engine: Engine) -> Iterator[Connection]:
    """A connection in one transaction for migrations, committed when the block ends.

    On SQLite, foreign-key enforcement is off meanwhile (SQLite's own procedure for changing
    a table): a column change rebuilds the table (copy, drop, rename), and dropping
    ``predictions`` with enforcement on would delete its feedback through ``ON DELETE
    CASCADE``. Before committing, ``PRAGMA foreign_key_check`` must find nothing broken.

    Raises:
        RuntimeError: the migrated SQLite database has rows whose parent is gone (rolled back).
    """
    sqlite = engine.url.get_backend_name() == "sqlite"
    with engine.connect() as connection:
        if sqlite:
            _sqlite_foreign_keys(connection, on=False)
        try:
            with connection.begin():
                yield connection
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")
        finally:
            if sqlite:
                _sqlite_foreign_keys(connection, on=True)


class Database:
    """The gateway's handle: ``await db.run(fn, *args)`` runs ``fn(session, *args)`` in a
    worker thread inside one committed transaction."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite runs one transaction at a time (BEGIN IMMEDIATE). Threads of this process
        # queue on a lock, woken as soon as it is free, instead of in SQLite's busy handler,
        # which sleeps up to 100 ms between tries (under 32 concurrent uploads a fifth of the
        # gateway's thread time went there; this lock took it from 56 to 64 req/s:
        # docs/benchmarks.md). Other processes sharing the
        # file still meet the busy timeout.
        sqlite = self.engine.url.get_backend_name() == "sqlite"
        self._serial: Any = threading.Lock() if sqlite else contextlib.nullcontext()
        self._inserts: dict[str, Insert] = {}

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            with self._serial, self.sessions.begin() as session:
                return fn(session, *args)
        except (OperationalError, InterfaceError, PoolTimeout) as e:
            log.warning("database unavailable: %s", e)
            raise DatabaseUnavailable(f"the database is unavailable: {type(e).__name__}") from e

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(self._call, fn, *args)

    def _insert(self, table: Table, values: dict[str, Any]) -> None:
        statement = self._inserts.get(table.name)
        if statement is None:
            statement = self._inserts[table.name] = insert(table)
        try:
            with self._serial, self.engine.begin() as connection:
                connection.execute(statement, values)
        except (OperationalError, InterfaceError, PoolTimeout) as e:
            log.warning("database unavailable: %s", e)
            raise DatabaseUnavailable(f"the database is unavailable: {type(e).__name__}") from e

    async def insert(self, table: Table, values: dict[str, Any]) -> None:
        """Insert one row and commit it before returning, as :meth:`run` does, but with
        SQLAlchemy Core on a connection: no ORM object, session or unit of work (half the CPU
        of ``session.add`` + flush for a prediction: docs/benchmarks.md, issue #14).

        Raises:
            IntegrityError: a unique constraint refused the row (nothing was committed).
            DatabaseUnavailable: the database cannot be reached or is locked.
        """
        await anyio.to_thread.run_sync(self._insert, table, values)

    async def ping(self) -> bool:
        """True when a trivial query succeeds."""
        try:
            await self.run(lambda s: s.execute(text("SELECT 1")))
        except DatabaseUnavailable:
            return False
        return True

    def upgrade(self) -> None:
        upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()
