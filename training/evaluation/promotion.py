"""The promotion gate: may a candidate model version replace the one being served?

Pure: the caller evaluates both versions on the SAME test split and passes the numbers here
(``training.evaluation.gate`` does, with a paired lesion-level bootstrap). The gate refuses a
candidate that is worse than the served version on a gated metric by more than that metric's
tolerance, or demonstrably worse (the paired interval of candidate - served lies entirely
below zero), unless forced. It says why, metric by metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

# Metric -> the largest drop (candidate - served) accepted. Balanced accuracy is the model's
# overall quality; melanoma sensitivity at the version's own referral threshold is what
# patients get, and what a clinician cannot afford to lose.
DEFAULT_TOLERANCES: Mapping[str, float] = {
    "balanced_accuracy": 0.01,
    "sensitivity_mel_op": 0.01,
}


@dataclass(frozen=True)
class MetricCheck:
    """One gated metric: both values, the paired difference interval, the verdict."""

    metric: str
    candidate: float
    served: float
    tolerance: float
    diff_low: float | None = None
    diff_high: float | None = None
    passed: bool = True
    reason: str = ""

    @property
    def difference(self) -> float:
        return self.candidate - self.served


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict.

    ``promote`` is what the caller acts on: True when every check passed, or when forced.
    ``passed`` is the verdict on the merits alone. ``reasons`` are sentences a person can act on.
    """

    promote: bool
    passed: bool
    forced: bool
    reasons: tuple[str, ...]
    checks: tuple[MetricCheck, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        if self.passed:
            head = "promote"
        else:
            head = "promote (forced past a failed gate)" if self.promote else "refuse"
        return "\n".join([head, *(f"- {r}" for r in self.reasons)])


def _check(
    metric: str,
    candidate: float,
    served: float,
    tolerance: float,
    interval: tuple[float, float] | None,
) -> MetricCheck:
    diff = candidate - served
    low, high = interval if interval is not None else (None, None)
    ci = f" (paired 95% CI {low:+.3f} to {high:+.3f})" if interval is not None else ""
    said = f"{metric}: candidate {candidate:.3f} vs served {served:.3f}, {diff:+.3f}{ci}"
    if diff < -tolerance:
        verdict = f"{said}: worse by more than the tolerance {tolerance:.3f}"
        return MetricCheck(metric, candidate, served, tolerance, low, high, False, verdict)
    if high is not None and high < 0:
        verdict = f"{said}: demonstrably worse (the whole interval is below 0)"
        return MetricCheck(metric, candidate, served, tolerance, low, high, False, verdict)
    ok = "within the tolerance" if diff < 0 else "not worse"
    return MetricCheck(metric, candidate, served, tolerance, low, high, True, f"{said}: {ok}")


def check_promotion(
    candidate_metrics: Mapping[str, float],
    served_metrics: Mapping[str, float] | None,
    differences: Mapping[str, tuple[float, float]] | None = None,
    tolerances: Mapping[str, float] = DEFAULT_TOLERANCES,
    force: bool = False,
) -> GateDecision:
    """Decide whether a candidate version may be promoted over the served one.

    Args:
        candidate_metrics: the candidate's metrics on the test split, e.g.
            ``{"balanced_accuracy": 0.74, "sensitivity_mel_op": 0.93}``.
        served_metrics: the served version's metrics on the SAME split; None when nothing
            is served yet (the first version is always allowed).
        differences: per metric, the paired bootstrap interval ``(low, high)`` of
            candidate - served; optional, metrics without one are judged on the point values.
        tolerances: the gated metrics and the drop each may take.
        force: promote even when a check fails (the failures stay in ``reasons``).

    Returns:
        The decision, with one check per gated metric.
    """
    if served_metrics is None:
        first = ("nothing is served yet: the first version is promoted",)
        return GateDecision(True, True, force, first)
    differences = differences or {}
    checks: list[MetricCheck] = []
    reasons: list[str] = []
    for metric, tolerance in tolerances.items():
        values = (candidate_metrics.get(metric), served_metrics.get(metric))
        if any(v is None or math.isnan(v) for v in values):
            which = "candidate" if values[0] is None or math.isnan(values[0]) else "served"
            reason = (
                f"{metric}: missing or undefined for the {which} version, so it cannot be "
                "compared; evaluate both versions on a split that has the cases it needs"
            )
            checks.append(
                MetricCheck(metric, math.nan, math.nan, tolerance, passed=False, reason=reason)
            )
        else:
            checks.append(_check(metric, values[0], values[1], tolerance, differences.get(metric)))
        reasons.append(checks[-1].reason)
    failed = [c for c in checks if not c.passed]
    if failed and force:
        reasons.append("forced: promoted although the checks above failed")
    elif failed:
        reasons.append("refused: pass force to promote anyway")
    return GateDecision(not failed or force, not failed, force, tuple(reasons), tuple(checks))
