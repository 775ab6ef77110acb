"""The FastAPI gateway: ``create_app(settings)`` wires routes, middleware, errors, lifespan.

The lifespan builds everything once per process: the rules (a bad file stops the start),
the database (migrated to head), the Triton client and the served-model catalog. Triton may
be down at start: the gateway starts anyway, answers uploads 503 + Retry-After, and /readyz
says which dependency is down (``?strict=true``: 503 until both are ready).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from contracts.images import ImageRejected
from contracts.rules import load_rules
from serving import problems, web
from serving.access import RequestContext
from serving.api.deps import AppState
from serving.api.routes import health, model_versions, monitoring, predictions
from serving.api.schemas import InternalProblem, Problem, ValidationProblem
from serving.db import Database, DatabaseUnavailable
from serving.gate import GatePolicy
from serving.limits import BodySizeLimit
from serving.metrics import Metrics, MetricsMiddleware
from serving.model_info import ModelCatalog, VersionNotServable
from serving.ratelimit import RateLimit
from serving.security import redact_access_log
from serving.settings import Settings, get_settings
from serving.triton.client import (
    AsyncTritonClassifier,
    TritonBadRequest,
    TritonError,
    TritonModelNotReady,
    TritonUnavailable,
)

log = logging.getLogger("serving")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    rules = load_rules(settings.rules_path)
    db = Database(settings.database_url)
    await anyio.to_thread.run_sync(db.upgrade)
    triton = AsyncTritonClassifier(
        settings.triton_url, settings.model_name, settings.triton_timeout_s
    )
    catalog = ModelCatalog(
        triton,
        settings.model_repository,
        settings.model_info_ttl_s,
        GatePolicy.from_settings(settings),
    )
    for name, on in (("QUALITY", settings.quality_checks), ("OOD", settings.ood_checks)):
        if not on:
            log.warning(
                "SKIN_%s_CHECKS=off: uploads are diagnosed without these checks of the gate",
                name,
            )
    if "SKIN_REFERRAL_THRESHOLD" in os.environ:
        log.warning(
            "SKIN_REFERRAL_THRESHOLD is set but no longer used: referral thresholds come only "
            "from the served version's metadata.json (docs/gateway.md)"
        )
    decoders = settings.decode_threads or os.cpu_count() or 1
    app.state.gateway = AppState(
        settings, db, rules, triton, catalog, app.state.metrics, anyio.CapacityLimiter(decoders)
    )
    app.state.monitor = monitoring.DriftMonitor(app.state.gateway)
    refresher = asyncio.create_task(app.state.monitor.refresh_forever())
    try:
        served = await catalog.served()
        log.info("serving %s version %s, input %s", served.name, served.version, served.input_size)
        log.info("gate of %s (refusals answered: %s)", served.gate.status, settings.refusal_mode)
        if served.no_advice:
            log.warning("%s", served.no_advice)
    except TritonError as e:
        log.warning("Triton is not ready yet (/readyz will say so): %s", e)
    try:
        yield
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await triton.close()
        db.dispose()


# What any API route may answer besides its own statuses, as the handlers here shape it.
API_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "malformed body: not JSON, or broken multipart"},
    401: {"model": Problem, "description": "missing or invalid API key"},
    404: {"model": Problem, "description": "no such prediction (or path)"},
    422: {"model": ValidationProblem, "description": "invalid field or unreadable image"},
    429: {"model": Problem, "description": "rate limit per API key exceeded: see Retry-After"},
    500: {"model": InternalProblem, "description": "a bug: quote error_id to the operator"},
}
IMAGE_KINDS = {413: "image-too-large", 415: "unsupported-image-type", 422: "unreadable-image"}


def _install_error_handlers(app: FastAPI) -> None:
    """Every error as an RFC 9457 problem (serving/problems.py)."""
    metrics: Metrics = app.state.metrics
    retry = {"Retry-After": str(app.state.settings.retry_after_s)}

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # The routes' ProblemError, FastAPI's and the router's own (404 path, 405, 400).
        kind = problems.kind_of(exc)
        extra = exc.extra if isinstance(exc, problems.ProblemError) else {}
        return problems.response(
            request, kind, exc.status_code, str(exc.detail), exc.headers, **extra
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # One readable sentence per field; never echo the input back (it may be an image).
        errors = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in errors)
        metrics.rejected.labels("422").inc()
        return problems.response(request, "invalid-request", 422, detail, errors=errors)

    @app.exception_handler(ImageRejected)
    async def rejected(request: Request, exc: ImageRejected) -> JSONResponse:
        metrics.rejected.labels(str(exc.status_code)).inc()
        kind = IMAGE_KINDS.get(exc.status_code)
        return problems.response(request, kind, exc.status_code, str(exc))

    @app.exception_handler(TritonUnavailable)
    async def unavailable(request: Request, exc: TritonUnavailable) -> JSONResponse:
        metrics.triton_errors.labels("unavailable").inc()
        log.warning("Triton unavailable: %s", exc)
        detail = "the model server is unavailable: retry later"
        return problems.response(request, "model-server-unavailable", 503, detail, retry)

    @app.exception_handler(TritonModelNotReady)
    async def not_ready(request: Request, exc: TritonModelNotReady) -> JSONResponse:
        metrics.triton_errors.labels("model_not_ready").inc()
        request.app.state.gateway.catalog.forget()  # the cached version may be gone
        log.warning("model not ready: %s", exc)
        detail = (
            f"the served model version cannot be used by this gateway: {exc}"
            if isinstance(exc, VersionNotServable)
            else "the model is not loaded (yet): retry later"
        )
        return problems.response(request, "model-not-loaded", 503, detail, retry)

    @app.exception_handler(TritonError)
    async def triton_failed(request: Request, exc: TritonError) -> JSONResponse:
        # TritonBadRequest lands here too: the gateway built the tensor, so it is our fault.
        kind = "bad_request" if isinstance(exc, TritonBadRequest) else "other"
        metrics.triton_errors.labels(kind).inc()
        log.error("Triton failed: %s", exc)
        detail = "the model server failed on this request; the operator is told"
        return problems.response(request, "model-server-failed", 502, detail)

    @app.exception_handler(DataError)
    async def unstorable(request: Request, exc: DataError) -> JSONResponse:
        # PostgreSQL refused a value from the request (a NUL byte in a path id): the client's
        # to fix. Neither the value nor the statement is logged or echoed (they may be personal).
        log.warning("database refused a request value: %s", type(exc.orig).__name__)
        detail = "a value in this request cannot be stored or looked up: remove control characters"
        return problems.response(request, "unstorable-value", 422, detail)

    @app.exception_handler(DatabaseUnavailable)
    async def db_down(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        detail = "the database is unavailable: retry later"
        return problems.response(request, "database-unavailable", 503, detail, retry)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway. Tests pass their own ``Settings``; production reads the environment."""
    settings = settings or get_settings()
    app = FastAPI(
        title="Skin-lesion classification gateway",
        version="1",
        description=(
            "Upload a dermoscopic photo with its body location; get ranked diagnoses over "
            "HAM10000's seven classes, the classes body-location rules excluded and why, and "
            "a referral recommendation. Decision support only, not a diagnosis. "
            "Authenticate with the X-API-Key header (or Authorization: Bearer)."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problems.document(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.include_router(health.router)
    app.include_router(problems.router)
    for router in (predictions.router, model_versions.router, monitoring.router):
        app.include_router(router, responses=API_ERRORS)
    web.mount(app)  # the clinician's page at / and the monitoring page
    _install_error_handlers(app)
    redact_access_log()
    # Added last = outermost: metrics see the body limit's 413s and the rate limit's 429s.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.rate_limit_per_s > 0:
        app.add_middleware(RateLimit, settings=settings)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    if settings.cors_allow_origins:  # closed unless origins are named: no CORS headers at all
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[
                "X-API-Key",
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "X-Request-ID",
            ],
            expose_headers=["X-Request-ID", "Retry-After", "Location", "Idempotent-Replayed"],
            max_age=600,
        )
    app.add_middleware(RequestContext)  # outermost: the request id for everything inside
    return app
