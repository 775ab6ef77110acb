"""Prometheus metrics of the gateway, in a registry of its own (one per app instance).

``/metrics`` needs an API key like every other route (Prometheus sends one with
``authorization: {credentials: <key>}`` in its scrape config) unless ``SKIN_METRICS_PUBLIC``
is set for a scraper on a private network. With several uvicorn workers each process has its
own counters: run one worker per container and let Prometheus sum over replicas.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from contracts.quality import REASON_CODES

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The gateway's counters and histograms."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "skin_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "skin_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "skin_stage_duration_seconds",
            "Time in one stage of a prediction (decode, inference, store)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "skin_predictions_total",
            "Predictions by top class after the rules",
            ["top_class", "model_version"],
            registry=r,
        )
        self.referrals = Counter(
            "skin_referrals_total",
            "Referral decisions (refer=none: no advice, the version has no validated thresholds)",
            ["refer"],
            registry=r,
        )
        self.exclusions = Counter(
            "skin_rule_exclusions_total",
            "Classes excluded by a rule",
            ["rule_id", "cls"],
            registry=r,
        )
        self.triton_errors = Counter(
            "skin_triton_errors_total", "Failed calls to Triton", ["kind"], registry=r
        )
        self.rejected = Counter(
            "skin_uploads_rejected_total",
            "Uploads refused as unusable (not an image, too large, invalid field)",
            ["status"],
            registry=r,
        )
        self.refusals = Counter(
            "skin_refusals_total",
            "Uploads the gate refused to diagnose, by reason (contracts.quality); these are "
            "not in skin_predictions_total",
            ["reason"],
            registry=r,
        )
        for reason in REASON_CODES:  # every reason listed from the start, at 0
            self.refusals.labels(reason)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP request by route template and status."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The route's template, not the raw path: ids in paths would explode cardinality.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status[0])).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - start)
