"""The gateway's records: SQLAlchemy models, Alembic-migrated schema, queries."""

from serving.db.engine import Database, DatabaseUnavailable, make_engine, upgrade

__all__ = ["Database", "DatabaseUnavailable", "make_engine", "upgrade"]
