"""Live metrics from confirmed diagnoses and the retraining rule, against answers worked by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from serving.live_metrics import Outcome, by_version_and_week, iso_week, live_metrics
from serving.retraining import RetrainingBounds, recommend


def test_live_metrics_known_answer() -> None:
    rows = [
        Outcome("mel", True, "mel"),
        Outcome("nv", False, "mel"),  # missed melanoma, not referred
        Outcome("nv", False, "nv"),
        Outcome("nv", True, "nv"),
        Outcome("bcc", True, "bcc"),
        Outcome("nv", False, None),  # no feedback yet
    ]
    m = live_metrics(rows)
    assert (m["predictions"], m["confirmed"]) == (6, 5)
    assert m["sensitivity"]["mel"] == {"value": 0.5, "cases": 2}
    assert m["sensitivity"]["nv"] == {"value": 1.0, "cases": 2}
    assert m["sensitivity"]["akiec"] == {"value": None, "cases": 0}
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 1.0) / 3, abs=1e-6)
    assert m["accuracy"] == pytest.approx(4 / 5)
    assert m["referral_rate"] == pytest.approx(3 / 6, abs=1e-6)
    assert m["referral_sensitivity"] == {"value": pytest.approx(2 / 3, abs=1e-6), "cases": 3}
    empty = live_metrics([])
    assert empty["balanced_accuracy"] is None and empty["referral_rate"] is None


def test_answers_without_referral_advice_count_as_neither() -> None:
    """``refer`` None (the version had no validated thresholds): out of both referral figures,
    still in the class figures."""
    rows = [
        Outcome("mel", True, "mel"),
        Outcome("nv", False, "nv"),
        Outcome("mel", None, "mel"),  # no advice
        Outcome("nv", None, None),  # no advice, no feedback yet
    ]
    m = live_metrics(rows)
    assert (m["predictions"], m["confirmed"]) == (4, 3)
    assert m["sensitivity"]["mel"] == {"value": 1.0, "cases": 2}
    assert m["referral_rate"] == pytest.approx(1 / 2, abs=1e-6)
    assert m["referral_sensitivity"] == {"value": 1.0, "cases": 1}
    none = live_metrics([Outcome("mel", None, "mel")])
    assert none["referral_rate"] is None
    assert none["referral_sensitivity"] == {"value": None, "cases": 0}


def test_iso_weeks_and_grouping() -> None:
    assert iso_week(datetime(2026, 1, 1)) == "2026-W01"  # a Thursday: week 1 of 2026
    assert iso_week(datetime(2027, 1, 1)) == "2026-W53"  # a Friday: still 2026's last week
    assert iso_week(datetime(2024, 12, 30)) == "2025-W01"  # a Monday: 2025's first week
    rows = [
        ("1", datetime(2026, 3, 2, tzinfo=UTC), Outcome("nv", False, "nv")),
        ("1", datetime(2026, 3, 9, tzinfo=UTC), Outcome("nv", False, "mel")),
        ("2", datetime(2026, 3, 9, tzinfo=UTC), Outcome("mel", True, "mel")),
    ]
    grouped = by_version_and_week(rows)
    assert list(grouped["1"]["weeks"]) == ["2026-W10", "2026-W11"]
    assert grouped["1"]["overall"]["confirmed"] == 2
    assert grouped["1"]["weeks"]["2026-W11"]["sensitivity"]["mel"]["value"] == 0.0
    assert grouped["2"]["overall"]["balanced_accuracy"] == 1.0


BOUNDS = RetrainingBounds(min_balanced_accuracy=0.5, max_drop=0.1, min_referral_sensitivity=0.85,
                          min_cases=30)  # fmt: skip


def _live(ba: float | None, confirmed: int, ref_sens: float | None, malignant: int) -> dict:
    return {
        "balanced_accuracy": ba,
        "confirmed": confirmed,
        "referral_sensitivity": {"value": ref_sens, "cases": malignant},
    }


def test_retraining_on_drift_names_the_features() -> None:
    drift = {
        "features": {
            "brightness": {"flag": True, "psi": 1.234, "p_value": 1e-9, "n": 80},
            "body_site": {"flag": False, "psi": 0.01, "p_value": 0.9, "n": 80},
        }
    }
    answer = recommend(drift, None, None, BOUNDS)
    assert answer["recommended"] and len(answer["reasons"]) == 1
    assert answer["reasons"][0].startswith("brightness drifted: PSI 1.234")


def test_retraining_on_live_figures_needs_enough_cases() -> None:
    assert not recommend(None, _live(0.2, 29, 0.1, 29), 0.8, BOUNDS)["recommended"]
    answer = recommend(None, _live(0.45, 30, 0.8, 30), 0.7, BOUNDS)
    assert answer["recommended"] and len(answer["reasons"]) == 3
    assert "below 0.500" in answer["reasons"][0]
    assert "more than 0.10 below the validation figure 0.700" in answer["reasons"][1]
    assert "referral sensitivity 0.800 over 30" in answer["reasons"][2]


def test_no_retraining_when_everything_is_within_bounds() -> None:
    answer = recommend({"features": {}}, _live(0.65, 100, 0.9, 40), 0.7, BOUNDS)
    assert answer == {"recommended": False, "reasons": []}
