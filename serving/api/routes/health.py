"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response, status

from serving.api.deps import AppState, StateDep, metrics_access
from serving.api.schemas import Readiness
from serving.model_info import VersionNotServable
from serving.triton.client import TritonError, TritonModelNotReady

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (no dependencies checked, no API key)."""
    return {"status": "alive"}


async def _served(state: AppState) -> tuple[str, bool | None, str | None, str | None]:
    """Whether answers carry referral advice, in one line, what the gate checks (Triton must be
    ready), and why the gateway refuses to serve the version Triton has (None: it does not)."""
    try:
        served = await state.catalog.served()
    except VersionNotServable as e:
        return "none: the served version is not used", None, None, str(e)
    except TritonModelNotReady as e:
        # Triton is ready but the version cannot be resolved (e.g. its metadata.json cannot be
        # read and it takes any size): every upload would get 503, so the service is not ready.
        return "none: the served version cannot be resolved", None, None, str(e)
    except TritonError as e:
        reason = f"unknown: the served version cannot be resolved ({type(e).__name__})"
        return reason, None, None, None
    gate = "; ".join([served.gate.status, *served.gate.warnings])
    return served.referral_status, served.no_advice is None, gate, None


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(
    state: StateDep,
    response: Response,
    strict: Annotated[
        bool, Query(description="503 unless Triton and the database are ready too")
    ] = False,
) -> Any:
    """Whether this replica can take traffic (no API key).

    A started replica can always answer: with Triton or the database down it serves the pages
    and answers uploads 503 + Retry-After, which is what a client should get. So ``/readyz``
    is 200 (``status`` "degraded" while a dependency is down) and a load balancer keeps every
    replica in while Triton restarts; Triton's own readiness is Triton's probe. ``strict=true``
    asks for the whole service: 503 + Retry-After unless Triton has the model loaded AND the
    database answers (``make run`` waits on it; a deploy pipeline's smoke test should too).

    ``referral`` says whether answers carry referral advice: a version without validated
    thresholds still serves rankings, so it does not make the replica unready. ``gate`` says
    what the served version refuses, and what it lacks (a version exported before the gate
    has no out-of-distribution score: it serves with the quality checks only).
    """
    triton_ok, db_ok = await asyncio.gather(state.triton.ready(), state.db.ping())
    checks = {
        "triton": "ready"
        if triton_ok
        else f"model {state.settings.model_name!r} not ready at {state.settings.triton_url}",
        "database": "ready" if db_ok else "unavailable",
    }
    referral, advice, gate, refused = (
        await _served(state) if triton_ok else (None, None, None, None)
    )
    if refused is not None:  # Triton has a version this gateway must not serve: not ready
        triton_ok, checks["triton"] = False, f"version not servable: {refused}"
    answer = {"checks": checks, "referral": referral, "referral_advice": advice, "gate": gate}
    if triton_ok and db_ok:
        return {"status": "ready", **answer}
    if strict:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        response.headers["Retry-After"] = str(state.settings.retry_after_s)
        return {"status": "not ready", **answer}
    return {"status": "degraded", **answer}


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_access)])
async def metrics(state: StateDep) -> Response:
    """Prometheus text format; an API key is required unless SKIN_METRICS_PUBLIC is set."""
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)
