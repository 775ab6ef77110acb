"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Response, status

from serving.api.deps import StateDep, metrics_access
from serving.api.schemas import Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (no dependencies checked, no API key)."""
    return {"status": "alive"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(state: StateDep, response: Response) -> Any:
    """Ready when Triton has the model loaded AND the database answers (no API key)."""
    triton_ok, db_ok = await asyncio.gather(state.triton.ready(), state.db.ping())
    checks = {
        "triton": "ready"
        if triton_ok
        else f"model {state.settings.model_name!r} not ready at {state.settings.triton_url}",
        "database": "ready" if db_ok else "unavailable",
    }
    if not (triton_ok and db_ok):
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        response.headers["Retry-After"] = str(state.settings.retry_after_s)
        return {"status": "not ready", "checks": checks}
    return {"status": "ready", "checks": checks}


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_access)])
async def metrics(state: StateDep) -> Response:
    """Prometheus text format; an API key is required unless SKIN_METRICS_PUBLIC is set."""
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)
