"""Alembic environment: runs on the connection the gateway hands over, or on a URL.

Programmatic use (the gateway at startup): ``serving.db.engine.upgrade`` passes an open
connection in a transaction through ``config.attributes["connection"]`` and commits it.
Command line: ``alembic -c serving/alembic.ini upgrade head`` with ``SKIN_DATABASE_URL`` set.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, text

from serving.db.engine import make_engine, migrating
from serving.db.tables import Base
from serving.settings import Settings

config = context.config
# Any constant works; all gateways use the same one, so only one migrates at a time.
ADVISORY_LOCK = 7_251_100


def migrate(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK})"))
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    migrate(connection)
else:
    url = (
        config.get_main_option("sqlalchemy.url")
        or os.environ.get("SKIN_DATABASE_URL")
        or Settings.model_fields["database_url"].default
    )
    with migrating(make_engine(url)) as conn:
        migrate(conn)
