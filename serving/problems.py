"""Every 4xx and 5xx the gateway answers is an RFC 9457 problem (``application/problem+json``).

    {"type": "/problems/image-refused", "title": "Not a usable lesion photo", "status": 422,
     "detail": "the photo is blurred: ...", "instance": "/v1/predictions",
     "code": "blurred", "refusal": {...}}

``type`` names the kind of error; a client branches on it (never on ``detail``, which is a
sentence for people). It is a URI reference relative to the gateway, and it resolves:
``GET /problems/<kind>`` is a page saying what the error means and what to do.
``title`` is fixed per kind, ``detail`` says what went wrong in this request, ``instance``
is the request's path (no query: a query may carry personal data). The answer's
``X-Request-ID`` header names the request in the logs (serving/request_context.py); the body
does not repeat it, because ``request_id`` already means the idempotency key in this API. Kinds
add their own members: ``errors`` (the invalid fields), ``code`` and ``refusal`` (why the
gate refused a photo), ``error_id`` (an internal error's log entry).

A status the gateway has no kind for (e.g. 405 from the router) gets ``type: about:blank``
and the status's standard phrase as title, as RFC 9457 section 4.2.1 says.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

MEDIA_TYPE = "application/problem+json"
BASE = "/problems/"


@dataclass(frozen=True)
class Kind:
    """One kind of error: its type URI's last segment, HTTP status, title, and what to do."""

    slug: str
    status: int
    title: str
    about: str

    @property
    def type(self) -> str:
        return BASE + self.slug


KINDS: dict[str, Kind] = {
    k.slug: k
    for k in (
        Kind(
            "malformed-request",
            400,
            "Malformed request",
            "The body could not be parsed: not JSON where JSON is expected, or a broken "
            "multipart form. Fix the client's encoding; resending the same bytes will fail again.",
        ),
        Kind(
            "unauthorized",
            401,
            "Missing or invalid API key",
            "Send the key in the X-API-Key header (or Authorization: Bearer <key>). Keys come "
            "from the operator (python -m serving.security new-key).",
        ),
        Kind(
            "not-found",
            404,
            "Not found",
            "No such prediction (use the id POST /v1/predictions returned) or no such path.",
        ),
        Kind(
            "prediction-refused",
            409,
            "The prediction was refused",
            "The upload was refused by the gate (not a usable lesion photo): it has no "
            "diagnosis to confirm. Send feedback for a prediction that has a ranking.",
        ),
        Kind(
            "photo-not-kept",
            409,
            "The photo was not kept",
            "The upload was not stored (no consent to keep the photo), so the gateway cannot "
            "draw on it. The map itself is in the answer's explanation.",
        ),
        Kind(
            "too-few-predictions",
            409,
            "Too few predictions",
            "The period holds too few predictions to freeze a monitoring baseline. Wait for "
            "more traffic or widen the period.",
        ),
        Kind(
            "body-too-large",
            413,
            "Request body too large",
            "The request body is over the gateway's limit (SKIN_MAX_BODY_BYTES). Send a "
            "smaller image: a dermoscopic photo does not need more.",
        ),
        Kind(
            "image-too-large",
            413,
            "Image too large",
            "The image is over the byte or pixel limit. Downscale or recompress it.",
        ),
        Kind(
            "unsupported-image-type",
            415,
            "Not a JPEG or PNG",
            "Only JPEG and PNG are accepted (checked by content, not by name). Convert it.",
        ),
        Kind(
            "invalid-request",
            422,
            "Invalid request",
            "A field is missing or invalid; ``errors`` lists each with a message.",
        ),
        Kind(
            "unreadable-image",
            422,
            "Unreadable image",
            "The file claims to be a JPEG or PNG but cannot be decoded (truncated, corrupt). "
            "Upload the original file again.",
        ),
        Kind(
            "image-refused",
            422,
            "Not a usable lesion photo",
            "The gate found the image unusable for a diagnosis (``code`` says why, "
            "``refusal`` what was measured): blurred, badly exposed, too small, not a "
            "dermoscopic lesion photo, several images. Retake the photo as ``detail`` says.",
        ),
        Kind(
            "idempotency-key-reused",
            422,
            "Request id reused for a different request",
            "The Idempotency-Key (or request_id) was already used for a different upload by "
            "this client. A retry must resend the same request; a new request needs a new id.",
        ),
        Kind(
            "unstorable-value",
            422,
            "Value cannot be stored",
            "A value in the request (e.g. an id in the path) holds characters the database "
            "cannot store. Remove control characters.",
        ),
        Kind(
            "rate-limited",
            429,
            "Too many requests",
            "This API key sent more requests than its rate allows. Wait for Retry-After seconds.",
        ),
        Kind(
            "internal-error",
            500,
            "Internal error",
            "A bug in the gateway. Nothing was recorded for this request. Quote ``error_id`` to "
            "the operator: it names the log entry with the details.",
        ),
        Kind(
            "model-server-failed",
            502,
            "The model server failed",
            "Triton answered this request with an error. The operator is told; retrying the "
            "same request is unlikely to help until they fix it.",
        ),
        Kind(
            "model-server-unavailable",
            503,
            "The model server is unavailable",
            "Triton cannot be reached (restarting, overloaded). Retry after Retry-After seconds; "
            "nothing was recorded.",
        ),
        Kind(
            "model-not-loaded",
            503,
            "The model is not loaded",
            "Triton is up but the model (version) is not ready, e.g. while a new version loads. "
            "Retry after Retry-After seconds.",
        ),
        Kind(
            "database-unavailable",
            503,
            "The database is unavailable",
            "The gateway cannot record answers, so it gives none. Retry after Retry-After "
            "seconds; nothing was recorded.",
        ),
    )
}

# A Starlette/FastAPI HTTPException that names no kind gets one by its status, where one fits.
BY_STATUS = {400: "malformed-request", 401: "unauthorized", 404: "not-found", 413: "body-too-large"}


def body(kind: str | None, status: int, detail: str, instance: str, **extra: Any) -> dict[str, Any]:
    """The problem object. ``kind`` None: ``about:blank`` with the status's standard phrase."""
    if kind is None:
        known: tuple[str, str] = ("about:blank", HTTPStatus(status).phrase)
    else:
        k = KINDS[kind]
        if k.status != status:
            raise ValueError(f"problem {kind!r} is a {k.status}, not a {status}")
        known = (k.type, k.title)
    problem = {"type": known[0], "title": known[1], "status": status, "detail": detail}
    return {**problem, "instance": instance, **extra}


def encode(problem: dict[str, Any]) -> bytes:
    return json.dumps(problem, separators=(",", ":")).encode()


def response(
    request: Request,
    kind: str | None,
    status: int,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem answer to ``request`` (its path as ``instance``)."""
    problem = body(kind, status, detail, request.url.path, **extra)
    return JSONResponse(problem, status_code=status, headers=headers, media_type=MEDIA_TYPE)


class ProblemError(HTTPException):
    """Raised by a route: answered as the problem ``kind`` (its status from the catalogue)."""

    def __init__(
        self,
        kind: str,
        detail: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(KINDS[kind].status, detail, headers)
        self.kind, self.extra = kind, extra


def kind_of(exc: StarletteHTTPException) -> str | None:
    """The kind of an HTTPException: its own, or the usual one for its status, or None."""
    if isinstance(exc, ProblemError):
        return exc.kind
    return BY_STATUS.get(exc.status_code)


async def send(send: Any, status: int, problem: dict[str, Any], headers: Any = ()) -> None:
    """Answer with ``problem`` from pure ASGI middleware (no Request object there)."""
    payload = encode(problem)
    head = [
        (b"content-type", MEDIA_TYPE.encode()),
        (b"content-length", str(len(payload)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": payload})


def example(kind: str) -> dict[str, Any]:
    """An example problem for the OpenAPI documentation."""
    k = KINDS[kind]
    extra: dict[str, Any] = {}
    if kind == "invalid-request":
        message = "Input should be 'abdomen', 'acral', ... or 'upper extremity'"
        extra["errors"] = [{"field": "body_location", "message": message}]
        detail = f"body_location: {message}"
    elif kind == "internal-error":
        extra["error_id"] = "3f2c9a1b7d0e"
        detail = "internal error; quote this id to the operator"
    else:
        detail = k.about.split(". ")[0].rstrip(".") + "."
    return body(kind, k.status, detail, "/v1/predictions", **extra)


router = APIRouter(include_in_schema=False)


@router.get("/problems/{slug}", response_class=HTMLResponse)
def page(slug: str) -> HTMLResponse:
    """``GET /problems/<slug>``: what a problem type means, for the person who meets it."""
    k = KINDS.get(slug)
    if k is None:
        return index(404)
    html = (
        f"<!doctype html><meta charset=utf-8><title>{escape(k.title)}</title>"
        f"<h1>{escape(k.title)}</h1><p>HTTP {k.status}, type <code>{escape(k.type)}</code></p>"
        f"<p>{escape(k.about)}</p><p><a href='{BASE}'>All problem types</a></p>"
    )
    return HTMLResponse(html)


@router.get("/problems/", response_class=HTMLResponse)
def problem_types() -> HTMLResponse:
    """``GET /problems/``: every problem type, linked."""
    return index()


def index(status: int = 200) -> HTMLResponse:
    rows = "".join(
        f"<tr><td><a href='{escape(k.type)}'>{escape(k.slug)}</a></td><td>{k.status}</td>"
        f"<td>{escape(k.title)}</td></tr>"
        for k in KINDS.values()
    )
    html = (
        "<!doctype html><meta charset=utf-8><title>Problem types</title><h1>Problem types</h1>"
        "<p>Every error of the gateway's API is an RFC 9457 problem whose <code>type</code> is "
        "one of these.</p><table><tr><th>type</th><th>status</th><th>title</th></tr>"
        f"{rows}</table>"
    )
    return HTMLResponse(html, status_code=status)


def document(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite FastAPI's OpenAPI document: every 4xx/5xx answer is ``application/problem+json``
    (FastAPI puts every model under ``application/json``), with an example per kind."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for code, answer in operation.get("responses", {}).items():
                # FastAPI files a model under the route's own media type (application/json,
                # or text/plain for a route answering text): an error is a problem whatever it.
                documented = [k for k in answer.get("content", {}) if k != MEDIA_TYPE]
                if not (code[:1] in "45" and documented):
                    continue
                content = answer["content"].pop(documented[0])
                for other in documented[1:]:
                    answer["content"].pop(other)
                if content.get("schema") == {"$ref": FASTAPI_422}:  # FastAPI's own default
                    content["schema"] = {"$ref": "#/components/schemas/ValidationProblem"}
                examples = {
                    k.slug: {"summary": k.title, "value": example(k.slug)}
                    for k in KINDS.values()
                    if str(k.status) == code and k.slug not in _NO_EXAMPLE
                }
                if examples:
                    content["examples"] = examples
                answer["content"][MEDIA_TYPE] = content
    schemas = schema.get("components", {}).get("schemas", {})
    if FASTAPI_422 not in json.dumps(schema.get("paths", {})):  # no longer referenced
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return schema


FASTAPI_422 = "#/components/schemas/HTTPValidationError"

# Kinds whose extension members (a whole refusal record) an example would only half show:
# their answers are described in the route's own documentation.
_NO_EXAMPLE = {"image-refused"}
