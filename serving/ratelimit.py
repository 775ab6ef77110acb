"""A rate limit per API key: a token bucket each, checked before the body is read.

Each valid key gets a bucket of ``burst`` tokens refilled at ``rate`` per second; a request
takes one, and a request finding the bucket empty gets 429 with ``Retry-After`` (whole
seconds until a token is back). Only requests presenting a VALID key are counted: buckets
exist only for configured keys, so unknown keys cannot grow memory, and they get their 401
from the route as before. Health probes are never limited.

The buckets live in this process. With N gateway replicas a client may send N times the
limit; a limit shared by all replicas belongs at the ingress (or a shared store).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from serving import problems
from serving.security import client_id, match_key
from serving.settings import Settings

UNLIMITED_PATHS = frozenset({"/healthz", "/readyz"})


class TokenBucket:
    """``burst`` tokens, refilled continuously at ``rate`` per second."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.stamp = float(burst), clock()

    def take(self) -> float:
        """Take a token: 0.0 when granted, else the seconds until one is available."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per client id, made on first use."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.buckets: dict[str, TokenBucket] = {}

    def check(self, client: str) -> float:
        """0.0 when ``client`` may proceed, else the seconds to wait."""
        bucket = self.buckets.get(client)
        if bucket is None:
            bucket = self.buckets[client] = TokenBucket(self.rate, self.burst, self.clock)
        return bucket.take()


def _presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key as the routes read it: ``X-API-Key``, else ``Authorization: Bearer``."""
    found = dict(headers)
    if key := found.get(b"x-api-key"):
        return key.decode("latin-1")
    scheme, _, token = found.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class RateLimit:
    """Pure ASGI middleware: 429 + ``Retry-After`` once a key's bucket is empty."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)

    def _client(self, scope: dict[str, Any]) -> str | None:
        if not self.settings.api_key_hashes:
            return "anonymous" if self.settings.allow_no_auth else None
        key = _presented_key(scope["headers"])
        digest = match_key(key, self.settings.api_key_hashes) if key else None
        return client_id(digest) if digest else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        client = self._client(scope)
        wait = self.limiter.check(client) if client else 0.0
        if wait == 0.0:
            await self.app(scope, receive, send)
            return
        retry = max(1, math.ceil(wait))
        s = self.settings
        detail = (
            f"rate limit of {s.rate_limit_per_s:g} requests/s per API key (bursts of "
            f"{s.rate_limit_burst}) exceeded: retry after {retry} s"
        )
        problem = problems.body("rate-limited", 429, detail, scope["path"])
        await problems.send(send, 429, problem, [(b"retry-after", str(retry).encode())])
