"""One id per request, followed through the gateway, Triton and the database.

:class:`serving.access.RequestContext` (the outermost middleware) takes the id from the client's
``X-Request-ID`` header, or makes one, and returns it in the answer's ``X-Request-ID``. A
malformed one (longer than :data:`MAX_ID_LENGTH`, or anything but printable ASCII without
spaces) is replaced by a generated id, and the replacement is logged (the reason, never the
value). The id is then:

- in every log line written while the request is handled (``request_id``, serving/logs.py);
- in every problem answer (``request_id``, serving/problems.py);
- sent to Triton as the inference request's id (Triton's own logs and traces show it);
- in the access line the middleware writes when the answer is sent (logger
  ``serving.access``): method, route template, path (without the query), status, latency,
  and what the route added with :func:`annotate` (client, model version, Triton time,
  prediction id: the database record).
"""

from __future__ import annotations

import contextvars
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

HEADER = "x-request-id"
MAX_ID_LENGTH = 128
VALID_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_ID_LENGTH}}}")


@dataclass
class Context:
    request_id: str
    fields: dict[str, Any] = field(default_factory=dict)


_current: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "skin_request", default=None
)


def current_request_id() -> str | None:
    """The id of the request being handled (None outside a request)."""
    context = _current.get()
    return context.request_id if context is not None else None


def annotate(**fields: Any) -> None:
    """Add fields to the request's access line (ignored outside a request)."""
    context = _current.get()
    if context is not None:
        context.fields.update(fields)


def accepted_id(raw: bytes | None) -> tuple[str, str | None]:
    """The request id to use for a header value, and why the client's was replaced (or None)."""
    if raw is None or raw == b"":
        return uuid.uuid4().hex, None
    text = raw.decode("latin-1")
    if len(text) > MAX_ID_LENGTH:
        return uuid.uuid4().hex, f"longer than {MAX_ID_LENGTH} characters ({len(text)})"
    if VALID_ID.fullmatch(text) is None:
        return uuid.uuid4().hex, "not printable ASCII without spaces"
    return text, None


def enter(request_id: str) -> tuple[Context, contextvars.Token[Context | None]]:
    """Start handling a request (the middleware; tests): its context and the token to reset."""
    context = Context(request_id)
    return context, _current.set(context)


def leave(token: contextvars.Token[Context | None]) -> None:
    _current.reset(token)
