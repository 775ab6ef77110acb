"""The gateway's logs: JSON lines for machines, or plain text for a person at a terminal.

``SKIN_LOG_FORMAT``: ``json`` (one object per line), ``text``, or ``auto`` (the default:
text when stderr is a terminal, JSON otherwise, e.g. in a container). A JSON line holds
``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, the ``request_id`` of the
request being handled (serving/request_context.py), the fields the code passed with
``extra=`` (the access line's method, route, status, latency_ms, model_version, triton_ms,
prediction_id ...) and ``exception`` for a traceback. Neither format holds the client's
address or a query string (both may be personal data); uvicorn's own access log is off.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from serving.request_context import current_request_id

# The attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id is not None:
            out["request_id"] = request_id
        out.update(extras(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger: message [request_id] key=value ...`` for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = current_request_id()
        fields = {
            k: v
            for k, v in extras(record).items()
            if k not in ("method", "path", "status", "latency_ms")  # already in the message
        }
        tail = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        prefix = f" [{request_id}]" if request_id is not None else ""
        head, _, trace = line.partition("\n")
        return f"{head}{prefix}{' ' + tail if tail else ''}" + (f"\n{trace}" if trace else "")


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure(fmt: str, level: str) -> None:
    """Route every logger (ours, uvicorn's, the libraries') to stderr in ``fmt``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
