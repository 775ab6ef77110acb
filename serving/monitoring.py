"""``python -m serving.monitoring``: freeze the capture baseline of the drift monitoring.

How photos are taken (width, height, aspect ratio, file format:
``contracts.drift.CAPTURE_FEATURES``) is compared with a baseline frozen from the clinic's
own traffic, not with the training copies (all 200 x 150). Once the clinic's photos look as
they should (its devices, its export settings), the operator freezes them::

    python -m serving.monitoring freeze-baseline [--days N | --since DATE] [--min-records K]
    python -m serving.monitoring show-baseline

The database is ``--database-url``, else ``SKIN_DATABASE_URL``, else the gateway's default;
the same freeze is ``POST /v1/monitoring/baseline`` with an API key. Every freeze adds a
baseline (the newest is in force), none is replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from contracts.drift import capture_baseline
from serving.db import Database
from serving.db import monitoring as queries
from serving.db.tables import CaptureBaseline
from serving.settings import Settings

FREEZE_COMMAND = "python -m serving.monitoring freeze-baseline"
DEFAULT_DAYS = 7.0
MAX_DAYS = 3660.0  # ten years: more is a typo (and beyond what a date can go back)
# A baseline much smaller than the drift window (SKIN_DRIFT_WINDOW, 500) would make its own
# sampling noise look like drift in every later window.
MIN_RECORDS = 200
NO_BASELINE_DETAIL = (
    f"no baseline (freeze one with `{FREEZE_COMMAND}` once the clinic's photos look as they "
    "should): image size, aspect and format are compared with the clinic's own traffic, "
    "never with the training copies"
)


class TooFewRecords(ValueError):
    """Fewer predictions than a baseline needs in the asked period: nothing was frozen."""


def freeze(
    session: Session, since: datetime | None, min_records: int, frozen_by: str
) -> dict[str, Any]:
    """Freeze the capture features of the predictions since ``since`` (all when None) as the
    baseline in force; its summary.

    Raises:
        TooFewRecords: fewer than ``min_records`` predictions in the period.
    """
    traffic = queries.capture_traffic(session, since)
    period = f"since {since.isoformat(timespec='seconds')}" if since else "in the database"
    if traffic.records < min_records or traffic.oldest is None or traffic.newest is None:
        raise TooFewRecords(
            f"only {traffic.records} predictions {period}; a capture baseline needs at least "
            f"{min_records} (--min-records): let the clinic send more photos, or freeze over a "
            "longer period (--days, --since). Nothing was frozen"
        )
    source = f"{traffic.records} predictions {period}"
    return queries.add_baseline(
        session,
        CaptureBaseline(
            frozen_at=datetime.now(UTC),
            frozen_by=frozen_by,
            since=since,
            oldest=traffic.oldest,
            newest=traffic.newest,
            records=traffic.records,
            features=capture_baseline(traffic.values, source),
        ),
    )


def parse_since(text: str) -> datetime:
    """An ISO 8601 date or date-time; without a zone, UTC."""
    when = datetime.fromisoformat(text)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.monitoring",
        description="The capture baseline of the drift monitoring (docs/monitoring.md).",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="the gateway's database (default: SKIN_DATABASE_URL, else the gateway's default)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    freeze_cmd = commands.add_parser(
        "freeze-baseline",
        help="freeze the image size, aspect and format of recent predictions as the baseline",
    )
    period = freeze_cmd.add_mutually_exclusive_group()
    period.add_argument(
        "--days",
        type=float,
        default=None,
        help=f"predictions of the last N days (default {DEFAULT_DAYS:g})",
    )
    period.add_argument(
        "--since", type=parse_since, default=None, help="predictions since DATE (ISO 8601, UTC)"
    )
    freeze_cmd.add_argument(
        "--min-records",
        type=int,
        default=MIN_RECORDS,
        help=f"refuse with fewer predictions than this (default {MIN_RECORDS})",
    )
    commands.add_parser("show-baseline", help="print the baseline in force and its histograms")
    return parser


def _database_url(given: str | None) -> str:
    default = Settings.model_fields["database_url"].default
    return given or os.environ.get("SKIN_DATABASE_URL") or str(default)


def _missing_sqlite_file(url: str) -> str | None:
    """Why ``url`` names no existing SQLite database (a typo would create an empty one)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:" or Path(parsed.database).is_file():
        return None
    return (
        f"no database at {parsed.database}: give the gateway's (--database-url or "
        "SKIN_DATABASE_URL)"
    )


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "freeze-baseline":
        if args.days is not None and not 0 < args.days <= MAX_DAYS:
            print(f"error: --days must be positive, at most {MAX_DAYS:g}", file=sys.stderr)
            return 2
        if args.min_records < 1:
            print("error: --min-records must be at least 1", file=sys.stderr)
            return 2
    url = _database_url(args.database_url)
    if why := _missing_sqlite_file(url):
        print(f"error: {why}", file=sys.stderr)
        return 2
    db = Database(url)
    try:
        db.upgrade()  # as the gateway does at start: the table may be newer than the database
        with db.sessions.begin() as session:
            if args.command == "show-baseline":
                current = queries.current_baseline(session)
                if current is None:
                    print(NO_BASELINE_DETAIL)
                else:
                    summary, features = current
                    print(_json({**summary, "histograms": features}))
                return 0
            since = args.since
            if since is None:
                since = datetime.now(UTC) - timedelta(days=args.days or DEFAULT_DAYS)
            summary = freeze(session, since, args.min_records, "cli")
    except TooFewRecords as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SQLAlchemyError as e:
        where = make_url(url).render_as_string(hide_password=True)
        print(f"error: cannot use the database {where}: {type(e).__name__}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    print(
        f"froze capture baseline {summary['id']} at {summary['frozen_at']:%Y-%m-%d %H:%M} UTC "
        f"from {summary['records']} predictions ({summary['oldest']:%Y-%m-%d %H:%M} to "
        f"{summary['newest']:%Y-%m-%d %H:%M} UTC); the monitoring compares "
        f"{', '.join(summary['features'])} with it from now on"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
