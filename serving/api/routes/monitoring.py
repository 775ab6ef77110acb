"""``/v1/monitoring``: drift against the served version's reference, live performance, and
whether to retrain; also kept current as Prometheus gauges by :class:`DriftMonitor`."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from prometheus_client import Gauge

from contracts.drift import INSUFFICIENT, DriftBounds, drift_report
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
from serving.retraining import RetrainingBounds, recommend

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/monitoring", tags=["monitoring"])
MAX_ROWS = 100_000  # history endpoints read at most this many predictions
BUCKETS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}


def _outcomes(rows: list[queries.Observation]) -> list[Outcome]:
    return [Outcome(r.top_class, r.refer, r.diagnosis) for r in rows]


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
        own = [r for r in rows if r.model_version == served.version]
        live = live_metrics(_outcomes(own))
        validation = validation_figures(served.metadata)
        drift, detail, about = None, None, None
        if reference:
            values = queries.window_values(rows, served.version)
            drift = drift_report(reference, values, self.bounds())
            keys = ("version", "dataset_version", "created_at", "class_priors")
            about = {**{k: reference.get(k) for k in keys}, "model_version": served.version}
        else:
            detail = (
                f"metadata.json of {served.name} version {served.version} has no reference "
                "statistics: export the version with its training data reachable "
                "(`python -m training export --reference-data DIR`) to monitor drift"
            )
        answer = {
            "status": drift["status"] if drift else "no reference",
            "detail": detail,
            "model": {"name": served.name, "version": served.version},
            "reference": about,
            "window": {
                "size": len(rows),
                "max_predictions": s.drift_window,
                "days": s.drift_window_days,
                "oldest": rows[-1].created_at if rows else None,
                "newest": rows[0].created_at if rows else None,
            },
            "bounds": vars(self.bounds()),
            "features": drift["features"] if drift else {},
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
    """Drift of the last predictions against the served version's reference statistics
    (PSI and chi-square p-value per feature, flags), live figures from feedback over the same
    window, and whether to retrain. ``status`` is ``drift``, ``ok``, ``insufficient data``
    (fewer than ``bounds.min_window`` predictions) or ``no reference``."""
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
    predicted-class shares and each feature's PSI (null where a
    bucket holds fewer than ``min_window`` values)."""
    monitor = get_monitor(request)
    served = await state.catalog.served()
    reference = served.metadata.reference if served.metadata else None
    since = datetime.now(UTC) - timedelta(days=days)
    rows = await state.db.run(queries.recent, MAX_ROWS, since)
    groups: dict[datetime, list[queries.Observation]] = {}
    for r in reversed(rows):  # oldest first
        groups.setdefault(_bucket_start(r.created_at, bucket), []).append(r)
    points = []
    for start, group in groups.items():
        values = queries.window_values(group, served.version)
        drift = drift_report(reference, values, monitor.bounds()) if reference else None
        features = (drift or {}).get("features", {})
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
