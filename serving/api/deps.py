"""What routes depend on: the app's state (created once in the lifespan) and the API key.

The dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool,
a hop to a worker thread and back per dependency and request (~40-50 us of CPU each, three per
upload) for work of a few microseconds (docs/benchmarks.md, issue #14).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from contracts.rules import Rules
from serving.db import Database
from serving.metrics import Metrics
from serving.model_info import ModelCatalog
from serving.problems import ProblemError
from serving.security import client_id, match_key
from serving.settings import Settings
from serving.triton.client import AsyncTritonClassifier

ANONYMOUS = "anonymous"


@dataclass
class AppState:
    """Everything the lifespan builds once and every request shares."""

    settings: Settings
    db: Database
    rules: Rules
    triton: AsyncTritonClassifier
    catalog: ModelCatalog
    metrics: Metrics
    decode_limiter: anyio.CapacityLimiter  # CPU-bound decoding: as many at once as cores


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.gateway
    return state


StateDep = Annotated[AppState, Depends(get_state)]

# auto_error=False: a missing key gets our own 401 that says how to send one.
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
_bearer = HTTPBearer(auto_error=False)


def authenticate(settings: Settings, key: str | None) -> str:
    """The caller's client id (a prefix of its key's digest), or 401."""
    if not settings.api_key_hashes and settings.allow_no_auth:
        return ANONYMOUS
    challenge = {"WWW-Authenticate": 'Bearer realm="skin-lesion"'}
    if not key:
        raise ProblemError(
            "unauthorized",
            "missing API key: send it in the X-API-Key header (or Authorization: Bearer <key>)",
            headers=challenge,
        )
    digest = match_key(key, settings.api_key_hashes)
    if digest is None:
        raise ProblemError(
            "unauthorized",
            "invalid API key: check the key you were given; ask the operator for a new one",
            headers=challenge,
        )
    return client_id(digest)


async def presented_key(
    api_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    return api_key or (bearer.credentials if bearer else None)


async def require_api_key(
    state: StateDep, key: Annotated[str | None, Depends(presented_key)]
) -> str:
    return authenticate(state.settings, key)


async def metrics_access(
    state: StateDep, key: Annotated[str | None, Depends(presented_key)]
) -> str:
    """/metrics: an API key like everywhere, unless SKIN_METRICS_PUBLIC opens it."""
    return "public" if state.settings.metrics_public else authenticate(state.settings, key)


ClientDep = Annotated[str, Depends(require_api_key)]
