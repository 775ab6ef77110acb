"""Whether to retrain: a pure function of the drift report and the live metrics.

Retraining is recommended when a feature drifted (``contracts.drift``), or when enough
confirmed cases show the live figures below their bounds: balanced accuracy under an
absolute floor or more than ``max_drop`` under the version's validation figure, or the
referral sensitivity (confirmed malignant cases that were referred) under its floor.

A capture feature (image size, aspect, format) drifts only against a baseline the operator
froze; its reason says so and what to check first (the device or its export settings). A
capture feature without a baseline is never flagged, so never a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_CAPTURE = (
    " against the capture baseline: photos are taken differently than when it was frozen "
    "(another device, resolution or export setting?); if the change is intended, freeze a new "
    "baseline (`python -m serving.monitoring freeze-baseline`)"
)


@dataclass(frozen=True)
class RetrainingBounds:
    min_balanced_accuracy: float = 0.5
    max_drop: float = 0.1
    min_referral_sensitivity: float = 0.85
    min_cases: int = 30


def recommend(
    drift: dict[str, Any] | None,
    live: dict[str, Any] | None,
    validation_balanced_accuracy: float | None,
    bounds: RetrainingBounds,
) -> dict[str, Any]:
    """``{"recommended": bool, "reasons": [sentences]}``.

    Args:
        drift: ``contracts.drift.monitoring_report``'s (or ``drift_report``'s) answer, or None.
        live: ``serving.live_metrics.live_metrics`` over the same window, or None.
        validation_balanced_accuracy: the served version's ``val/balanced_accuracy``.
        bounds: the configured floors and the number of confirmed cases they need.
    """
    reasons = [
        f"{name} drifted: PSI {f['psi']:.3f} with p = {f['p_value']:.2g} over {f['n']} predictions"
        + (_CAPTURE if f.get("group") == "capture" else "")
        for name, f in ((drift or {}).get("features") or {}).items()
        if f["flag"]
    ]
    live = live or {}
    ba, confirmed = live.get("balanced_accuracy"), live.get("confirmed", 0)
    if ba is not None and confirmed >= bounds.min_cases:
        if ba < bounds.min_balanced_accuracy:
            reasons.append(
                f"live balanced accuracy {ba:.3f} over {confirmed} confirmed cases is below "
                f"{bounds.min_balanced_accuracy:.3f}"
            )
        if validation_balanced_accuracy is not None and (
            ba < validation_balanced_accuracy - bounds.max_drop
        ):
            reasons.append(
                f"live balanced accuracy {ba:.3f} is more than {bounds.max_drop:.2f} below "
                f"the validation figure {validation_balanced_accuracy:.3f}"
            )
    referral = live.get("referral_sensitivity") or {}
    value, cases = referral.get("value"), referral.get("cases", 0)
    if value is not None and cases >= bounds.min_cases and value < bounds.min_referral_sensitivity:
        reasons.append(
            f"live referral sensitivity {value:.3f} over {cases} confirmed malignant cases is "
            f"below {bounds.min_referral_sensitivity:.3f}"
        )
    return {"recommended": bool(reasons), "reasons": reasons}
