"""``/v1/monitoring``: drift (content features against the served version's training reference,
capture features against the operator's frozen baseline), refused uploads per day, live
performance, and whether to retrain; also kept current as Prometheus gauges by
:class:`DriftMonitor`."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, status
from prometheus_client import Gauge
from pydantic import BaseModel, Field, field_validator

from contracts.drift import CAPTURE_FEATURES, INSUFFICIENT, DriftBounds, monitoring_report
from serving.api.deps import AppState, ClientDep, StateDep
from serving.db import monitoring as queries
from serving.live_metrics import (
    Outcome,
    by_version_and_week,
    live_metrics,
    referral_rate,
    validation_figures,
)
from serving.model_info import version_metadata
from serving.monitoring import (
    DEFAULT_DAYS,
    MAX_DAYS,
    MIN_RECORDS,
    NO_BASELINE_DETAIL,
    TooFewRecords,
    freeze,
)
from serving.problems import ProblemError
from serving.retraining import RetrainingBounds, recommend

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/monitoring", tags=["monitoring"])
MAX_ROWS = 100_000  # history endpoints read at most this many predictions
BUCKETS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}
REFUSAL_DAYS = 30  # days of refusal rates in GET /v1/monitoring


def _outcomes(rows: list[queries.Observation]) -> list[Outcome]:
    return [Outcome(r.top_class, r.refer, r.diagnosis) for r in rows]


Baseline = tuple[dict[str, Any], dict[str, Any]] | None  # (summary, histograms) in force


def _compared(
    reference: dict[str, Any] | None,
    baseline: Baseline,
    values: dict[str, Any],
    bounds: DriftBounds,
) -> dict[str, Any]:
    """``contracts.drift.monitoring_report``, each feature saying what it was compared with."""
    drift = monitoring_report(
        reference, baseline[1] if baseline else None, values, bounds, NO_BASELINE_DETAIL
    )
    for name, f in drift["features"].items():
        if name not in CAPTURE_FEATURES:
            f["compared_with"] = f"training reference {(reference or {}).get('version')}"
        elif baseline:
            b = baseline[0]
            f["compared_with"] = (
                f"capture baseline {b['id']} frozen {b['frozen_at']:%Y-%m-%d %H:%M} UTC "
                f"from {b['records']} predictions"
            )
        else:
            f["compared_with"] = None
    return drift


class DriftMonitor:
    """Computes the monitoring report and mirrors it into Prometheus gauges."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        registry = state.metrics.registry
        self.psi = Gauge("skin_drift_psi", "PSI of the window vs the reference", ["feature"],
                         registry=registry)  # fmt: skip
        self.flag = Gauge("skin_drift_flag", "1 when the feature drifted", ["feature"],
                          registry=registry)  # fmt: skip
        self.window = Gauge(
            "skin_drift_window_size", "Predictions in the window", registry=registry
        )
        self.retrain = Gauge(
            "skin_retraining_recommended", "1 when retraining is recommended", registry=registry
        )

    def bounds(self) -> DriftBounds:
        s = self.state.settings
        return DriftBounds(s.drift_psi_bound, s.drift_p_value, s.drift_min_window)

    def since(self) -> datetime | None:
        days = self.state.settings.drift_window_days
        return datetime.now(UTC) - timedelta(days=days) if days else None

    async def report(self) -> dict[str, Any]:
        """The current report (see ``GET /v1/monitoring``); updates the gauges."""
        s, state = self.state.settings, self.state
        served = await state.catalog.served()
        reference = served.metadata.reference if served.metadata else None
        rows = await state.db.run(queries.recent, s.drift_window, self.since())
        baseline = await state.db.run(queries.current_baseline)
        refusals = await state.db.run(queries.refusal_rates, REFUSAL_DAYS, datetime.now(UTC))
        own = [r for r in rows if r.model_version == served.version]
        live = live_metrics(_outcomes(own))
        validation = validation_figures(served.metadata)
        detail, about = None, None
        values = queries.window_values(rows, served.version)
        drift = _compared(reference, baseline, values, self.bounds())
        if reference:
            keys = ("version", "dataset_version", "created_at", "class_priors")
            about = {**{k: reference.get(k) for k in keys}, "model_version": served.version}
        else:
            detail = (
                f"metadata.json of {served.name} version {served.version} has no reference "
                "statistics: export the version with its training data reachable "
                "(`python -m training export --reference-data DIR`) to monitor drift"
            )
        answer = {
            "status": drift["status"] if reference or baseline else "no reference",
            "detail": detail,
            "model": {"name": served.name, "version": served.version},
            "reference": about,
            "baseline": baseline[0] if baseline else None,
            "baseline_detail": None if baseline else NO_BASELINE_DETAIL,
            "window": {
                "size": len(rows),
                "max_predictions": s.drift_window,
                "days": s.drift_window_days,
                "oldest": rows[-1].created_at if rows else None,
                "newest": rows[0].created_at if rows else None,
            },
            "bounds": vars(self.bounds()),
            "features": drift["features"],
            "refusals": refusals,
            "live": {**live, "model_version": served.version},
            "validation": validation,
            "retraining": recommend(
                drift,
                live,
                validation["balanced_accuracy"],
                RetrainingBounds(
                    s.retrain_min_balanced_accuracy,
                    s.retrain_max_drop,
                    s.retrain_min_referral_sensitivity,
                    s.retrain_min_cases,
                ),
            ),
            "computed_at": datetime.now(UTC),
        }
        self._export(answer)
        return answer

    def _export(self, answer: dict[str, Any]) -> None:
        self.window.set(answer["window"]["size"])
        self.retrain.set(int(answer["retraining"]["recommended"]))
        for name, f in answer["features"].items():
            self.psi.labels(name).set(math.nan if f["psi"] is None else f["psi"])
            self.flag.labels(name).set(int(f["flag"]))

    async def refresh_forever(self) -> None:
        """Recompute every ``drift_refresh_s`` seconds so the gauges stay current."""
        period = self.state.settings.drift_refresh_s
        while period > 0:
            try:
                await self.report()
            except Exception as exc:  # noqa: BLE001 - Triton or the database down: try later
                log.warning("drift refresh failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(period)


def get_monitor(request: Request) -> DriftMonitor:
    monitor: DriftMonitor = request.app.state.monitor
    return monitor


@router.get("")
async def monitoring(request: Request, _: ClientDep) -> dict[str, Any]:
    """Drift of the last predictions (PSI and chi-square p-value per feature, flags): content
    features (``group: content``: body site, brightness, contrast, predicted class,
    diagnosis) against the served version's training reference, capture features
    (``group: capture``: image width, height, aspect, format) against the capture
    ``baseline`` in force (``no baseline`` until one is frozen: never drift); refused uploads
    per UTC day over the last 30 days (``refusals``); live figures from feedback over the
    window; whether to retrain. ``status`` is ``drift``, ``ok``, ``insufficient data`` (fewer
    than ``bounds.min_window`` predictions) or ``no reference`` (neither a training reference
    nor a baseline). Refused uploads are never in the window."""
    return await get_monitor(request).report()


def _bucket_start(when: datetime, bucket: str) -> datetime:
    start = when.replace(minute=0, second=0, microsecond=0)
    if bucket != "hour":
        start = start.replace(hour=0)
    if bucket == "week":
        start -= timedelta(days=start.weekday())  # ISO weeks start on Monday
    return start


@router.get("/timeline")
async def timeline(
    request: Request,
    state: StateDep,
    _: ClientDep,
    days: Annotated[int, Query(ge=1, le=366)] = 30,
    bucket: Literal["hour", "day", "week"] = "day",
) -> dict[str, Any]:
    """Per hour, day or week of the last ``days`` days: predictions, mean brightness and
    contrast, referral rate (among answers with referral advice; null without any),
    predicted-class shares and each feature's PSI against what ``GET /v1/monitoring``
    compares it with (null where a bucket holds fewer than ``min_window`` values, or for
    capture features without a baseline)."""
    monitor = get_monitor(request)
    served = await state.catalog.served()
    reference = served.metadata.reference if served.metadata else None
    since = datetime.now(UTC) - timedelta(days=days)
    rows = await state.db.run(queries.recent, MAX_ROWS, since)
    baseline = await state.db.run(queries.current_baseline)
    groups: dict[datetime, list[queries.Observation]] = {}
    for r in reversed(rows):  # oldest first
        groups.setdefault(_bucket_start(r.created_at, bucket), []).append(r)
    points = []
    for start, group in groups.items():
        values = queries.window_values(group, served.version)
        features = _compared(reference, baseline, values, monitor.bounds())["features"]
        n = len(group)
        points.append(
            {
                "start": start,
                "n": n,
                "confirmed": len(values["diagnosis"]),
                "brightness_mean": round(sum(values["brightness"]) / n, 3),
                "contrast_mean": round(sum(values["contrast"]) / n, 3),
                "referral_rate": referral_rate(r.refer for r in group)["value"],
                "psi": {
                    k: None if f["status"] == INSUFFICIENT else f["psi"]
                    for k, f in features.items()
                },
                "flag": {k: f["flag"] for k, f in features.items()},
            }
        )
    return {
        "bucket": bucket,
        "days": days,
        "model": {"name": served.name, "version": served.version},
        "bounds": vars(monitor.bounds()),
        "points": points,
    }


@router.get("/performance")
async def performance(
    state: StateDep, _: ClientDep, weeks: Annotated[int, Query(ge=1, le=104)] = 12
) -> dict[str, Any]:
    """Live figures from feedback per model version and ISO week (sensitivity per class,
    balanced accuracy, referral rate and sensitivity) beside each version's validation
    figures from its metadata.json."""
    since = datetime.now(UTC) - timedelta(weeks=weeks)
    rows = await state.db.run(queries.recent, MAX_ROWS, since)
    grouped = by_version_and_week(
        (r.model_version, r.created_at, o) for r, o in zip(rows, _outcomes(rows), strict=True)
    )
    repository, name = state.settings.model_repository, state.settings.model_name
    versions = [
        {
            "model_version": v,
            "validation": validation_figures(version_metadata(repository, name, v)),
            "overall": grouped[v]["overall"],
            "weeks": [{"week": w, **m} for w, m in grouped[v]["weeks"].items()],
        }
        for v in sorted(grouped, key=lambda v: int(v) if v.isdigit() else -1)
    ]
    return {"weeks": weeks, "since": since, "model_name": name, "versions": versions}


@router.get("/refusals")
async def refusals(
    state: StateDep, _: ClientDep, days: Annotated[int, Query(ge=1, le=366)] = 30
) -> dict[str, Any]:
    """Refused uploads per UTC day of the last ``days`` (today the last): predictions,
    refusals, the refusal rate ``refusals / (refusals + predictions)`` (null on a day without
    uploads) and refusals per reason; ``total`` over all the days."""
    rates: dict[str, Any] = await state.db.run(queries.refusal_rates, days, datetime.now(UTC))
    return rates


class FreezeBaseline(BaseModel):
    """Which predictions to freeze as the capture baseline: the last ``days`` (7 when neither
    is given) or those since ``since``; with both, the later of the two bounds."""

    days: float | None = Field(
        None, gt=0, le=MAX_DAYS, description="predictions of the last N days"
    )
    since: datetime | None = Field(None, description="predictions since (ISO 8601; UTC if naive)")
    min_records: int = Field(MIN_RECORDS, ge=1, description="refuse with fewer predictions")

    @field_validator("days", "min_records", mode="before")
    @classmethod
    def _no_booleans(cls, value: object) -> object:
        # JSON true is not a count (pydantic's lax mode would read it as 1).
        if isinstance(value, bool):
            raise ValueError("a number is needed, not a boolean")
        return value


@router.get("/baseline")
async def baseline(
    state: StateDep, _: ClientDep, history: Annotated[int, Query(ge=1, le=100)] = 10
) -> dict[str, Any]:
    """The capture baseline in force (null until one is frozen) with its histograms, and the
    newest ``history`` baselines frozen (newest first)."""
    current = await state.db.run(queries.current_baseline)
    frozen = await state.db.run(queries.baseline_history, history)
    return {
        "current": {**current[0], "histograms": current[1]} if current else None,
        "detail": None if current else NO_BASELINE_DETAIL,
        "history": frozen,
    }


@router.post(
    "/baseline",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "too few predictions in the period: nothing frozen"}},
)
async def freeze_baseline(
    state: StateDep, client: ClientDep, body: FreezeBaseline
) -> dict[str, Any]:
    """Freeze the image width, height, aspect and format of the predictions of the period as
    the capture baseline in force (``python -m serving.monitoring freeze-baseline`` does the
    same); recorded with the caller's client id. 409 with fewer than ``min_records``."""
    bounds = []
    if body.since is not None:
        given = body.since
        bounds.append(given.replace(tzinfo=UTC) if given.tzinfo is None else given)
    if body.days is not None or body.since is None:
        bounds.append(datetime.now(UTC) - timedelta(days=body.days or DEFAULT_DAYS))
    since = max(bounds)
    try:
        frozen: dict[str, Any] = await state.db.run(freeze, since, body.min_records, client)
    except TooFewRecords as e:
        raise ProblemError("too-few-predictions", str(e)) from e
    return frozen
