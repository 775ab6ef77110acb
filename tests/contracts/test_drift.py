"""Pure drift statistics (PSI, chi-square, histograms, reports), against answers worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from contracts.drift import (
    CAPTURE_FEATURES,
    INSUFFICIENT,
    NO_BASELINE,
    OTHER,
    SIZE_EDGES,
    DriftBounds,
    capture_baseline,
    chi_square,
    drift_report,
    feature_drift,
    histogram,
    monitoring_report,
    psi,
)


def test_psi_known_answer() -> None:
    # Without smoothing, shares 0.5/0.5 -> 0.7/0.3: 0.2 ln(1.4) + 0.2 ln(0.5/0.3).
    assert psi([50, 50], [70, 30], pseudo_count=0) == pytest.approx(0.169459, abs=1e-6)
    # Half a count per bin: 50.5/101 each, and 70.5/101, 30.5/101.
    q = 70.5 / 101
    assert psi([50, 50], [70, 30]) == pytest.approx(
        (q - 0.5) * math.log(q / 0.5) + (0.5 - q) * math.log((1 - q) / 0.5), rel=1e-12
    )
    assert psi([1, 2, 3], [10, 20, 30], pseudo_count=0) == pytest.approx(0.0, abs=1e-12)
    # PSI is symmetric in its two arguments.
    assert psi([70, 30], [50, 50]) == pytest.approx(psi([50, 50], [70, 30]))


def test_psi_empty_bin_is_finite_and_small_windows_are_not_punished() -> None:
    # Reference 10/0 -> 10.5/11, 0.5/11; window 5/5 -> 0.5/0.5.
    p, q = 10.5 / 11, 0.5
    expected = (q - p) * math.log(q / p) + (q - (1 - p)) * math.log(q / (1 - p))
    assert psi([10, 0], [5, 5]) == pytest.approx(expected, rel=1e-9)
    # A window of 80 that has not yet filled a 1 % bin costs little once smoothed.
    reference = [990, 10]
    assert psi(reference, [80, 0]) < 0.01 < psi(reference, [80, 0], pseudo_count=1e-9)
    # Bins empty on both sides change nothing: one image size, however many fixed bins.
    assert psi([400, 0, 0, 0, 0], [80, 0, 0, 0, 0]) == 0.0
    assert psi([300, 100, 0, 0], [60, 20, 0, 0]) == pytest.approx(psi([300, 100], [60, 20]))


def test_psi_rejects_mismatched_or_empty_counts() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="non-empty"):
        psi([0, 0], [1, 2])


def test_chi_square_known_answer() -> None:
    # Row totals 30 and 70, column totals 40 and 60, N = 100: expected 12, 18, 28, 42;
    # statistic 4/12 + 4/18 + 4/28 + 4/42; with one degree of freedom p = erfc(sqrt(x / 2)).
    statistic, dof, p = chi_square([10, 20], [30, 40])
    assert statistic == pytest.approx(4 / 12 + 4 / 18 + 4 / 28 + 4 / 42, rel=1e-12)
    assert dof == 1
    assert p == pytest.approx(math.erfc(math.sqrt(statistic / 2)), rel=1e-9)


def test_chi_square_drops_empty_bins_and_one_bin_is_no_evidence() -> None:
    assert chi_square([10, 0, 20], [30, 0, 40])[:2] == pytest.approx((0.79365079, 1))
    assert chi_square([10, 0], [30, 0]) == (0.0, 0, 1.0)
    assert chi_square([10, 20], [1, 2]) == (0.0, 0, 1.0)  # 3 values: nothing to test


def test_chi_square_pools_sparse_bins() -> None:
    # One value in a rare bin (expected 80 * 5/8085 = 0.05) must not decide the test alone.
    reference, window = [4000, 4000, 5, 0], [40, 39, 1, 0]
    statistic, dof, p = chi_square(reference, window)
    # Rare bin pooled into the smallest other one: [[4000, 4005], [40, 40]].
    assert statistic == pytest.approx(chi_square([4000, 4005], [40, 40], 0)[0], rel=1e-12)
    assert dof == 1 and p > 0.9
    assert chi_square(reference, window, min_expected=0)[2] < 1e-3  # what pooling prevents
    # A pool large enough stays a bin of its own: values the reference never saw count.
    statistic, dof, p = chi_square([500, 500, 3, 2], [20, 20, 30, 30])
    assert dof == 2 and p < 1e-10


def test_a_complete_shift_into_one_new_bin_is_tested_exactly() -> None:
    # 400 reference photos 200 px wide, 28 in the window 600 px wide: 1.8 expected in the new
    # bin; folding it into the only other bin would leave nothing to test.
    statistic, dof, p = chi_square([400, 0], [0, 28])
    assert (statistic, dof) == (pytest.approx(428.0), 1) and p < 1e-40
    # The same table shape without a shift: Fisher's test finds nothing either.
    assert chi_square([990, 10], [79, 1])[2] > 0.5


def test_histogram_bins_edges_outliers_and_nan() -> None:
    counts = histogram([-5, 0, 9.99, 10, 15, 20, 25, 1000, float("nan")], [0, 10, 20, 30])
    # [0,10): -5 (below: first bin), 0, 9.99; [10,20): 10, 15; [20,30]: 20, 25, 1000 (above)
    assert counts.tolist() == [3, 2, 3]
    with pytest.raises(ValueError, match="two edges"):
        histogram([1.0], [0])


CATEGORICAL = {"kind": "categorical", "categories": ["a", "b", "c"], "counts": [500, 300, 200]}
NUMERIC = {"kind": "numeric", "edges": [0, 50, 100, 150, 200, 256], "counts": [0, 100, 600, 300, 0]}


def test_feature_drift_flags_a_large_shift_with_enough_values() -> None:
    result = feature_drift(CATEGORICAL, ["c"] * 80 + ["a"] * 20, DriftBounds(0.2, 0.01, 50))
    assert result["n"] == 100 and result["status"] == "drift" and result["flag"] is True
    assert result["psi"] == pytest.approx(psi([500, 300, 200], [20, 0, 80]), abs=1e-6)
    assert result["p_value"] < 1e-10
    assert result["bins"] == ["a", "b", "c"]
    assert result["reference"] == [0.5, 0.3, 0.2] and result["window"] == [0.2, 0.0, 0.8]


def test_feature_drift_below_the_minimum_window_is_insufficient_data() -> None:
    result = feature_drift(CATEGORICAL, ["c"] * 49, DriftBounds(0.2, 0.01, 50))
    assert result["status"] == INSUFFICIENT and result["flag"] is False
    assert result["psi"] > 1  # computed and shown, but not acted on


def test_feature_drift_needs_both_psi_and_the_test() -> None:
    same = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    result = feature_drift(CATEGORICAL, same, DriftBounds(0.2, 0.01, 50))
    assert result["psi"] < 1e-4 and result["p_value"] == pytest.approx(1)
    assert result["status"] == "ok"
    # A clear shift (PSI about 8) that a PSI bound of 10 tolerates is not flagged, however
    # small p is.
    shifted = feature_drift(CATEGORICAL, ["c"] * 100, DriftBounds(10.0, 0.01, 50))
    assert shifted["p_value"] < 1e-10 and not shifted["flag"]
    # A p-value bound nothing reaches: not flagged either.
    assert not feature_drift(CATEGORICAL, ["c"] * 100, DriftBounds(0.2, 1e-300, 50))["flag"]


def test_numeric_feature_bins_the_window_with_the_reference_edges() -> None:
    dark = list(np.linspace(20, 90, 100))  # all below 100; the reference mostly 100-200
    result = feature_drift(NUMERIC, dark, DriftBounds())
    assert result["bins"] == ["0-50", "50-100", "100-150", "150-200", "200-256"]
    assert result["window"][:2] == pytest.approx([0.43, 0.57]) and result["flag"]


def test_unknown_categories_get_a_bin_of_their_own() -> None:
    result = feature_drift(CATEGORICAL, ["a"] * 60 + ["zzz"] * 40, DriftBounds())
    assert result["bins"] == ["a", "b", "c", OTHER]
    assert result["reference"][-1] == 0.0 and result["window"][-1] == 0.4


def test_drift_report_status_and_features() -> None:
    reference = {"features": {"site": CATEGORICAL, "brightness": NUMERIC}}
    bounds = DriftBounds(0.2, 0.01, 50)
    drifted = drift_report(reference, {"site": ["c"] * 60, "brightness": [120.0] * 60}, bounds)
    assert drifted["status"] == "drift" and set(drifted["features"]) == {"site", "brightness"}
    assert drifted["features"]["site"]["flag"]
    few = drift_report(reference, {"site": ["a"] * 10, "brightness": []}, bounds)
    assert few["status"] == INSUFFICIENT
    assert few["features"]["brightness"]["psi"] is None  # nothing to compare
    # Features the window does not provide are left out, not reported as zero.
    assert set(drift_report(reference, {"site": ["a"] * 10}, bounds)["features"]) == {"site"}


def _capture(n: int, width: int, height: int, fmt: str = "jpeg") -> dict[str, list]:
    return {
        "image_width": [width] * n,
        "image_height": [height] * n,
        "image_aspect": [width / height] * n,
        "image_format": [fmt] * n,
    }


# What training.reference_stats stores for HAM10000's 200 x 150 copies.
TRAINING = {
    "features": {
        "site": CATEGORICAL,
        "image_width": {
            "kind": "numeric",
            "edges": list(SIZE_EDGES),
            "counts": [0, 400] + [0] * (len(SIZE_EDGES) - 3),
        },
    }
}


def test_capture_features_without_a_baseline_are_never_drift() -> None:
    bounds = DriftBounds(0.2, 0.01, 50)
    window = {"site": ["a"] * 50 + ["b"] * 30 + ["c"] * 20, **_capture(100, 600, 450)}
    # Against the training copies, full-size photos drift (the alarm a clinic learnt to ignore)...
    assert drift_report(TRAINING, window, bounds)["features"]["image_width"]["flag"]
    # ...against nothing until the operator freezes a baseline.
    report = monitoring_report(TRAINING, None, window, bounds, "freeze one")
    assert report["status"] == "ok"
    assert set(report["features"]) == {"site", *CAPTURE_FEATURES}
    assert report["features"]["site"]["group"] == "content"
    for name in CAPTURE_FEATURES:
        f = report["features"][name]
        assert (f["group"], f["status"], f["flag"], f["psi"]) == (
            "capture",
            NO_BASELINE,
            False,
            None,
        )
        assert f["n"] == 100 and f["detail"] == "freeze one"
    # Without a training reference either, nothing is judged.
    assert monitoring_report(None, None, window, bounds)["status"] == INSUFFICIENT


def test_capture_features_are_compared_with_the_frozen_baseline() -> None:
    bounds = DriftBounds(0.2, 0.01, 50)
    baseline = capture_baseline(_capture(300, 600, 450), "300 predictions")
    assert baseline["image_width"]["counts"][SIZE_EDGES.index(512)] == 300
    assert baseline["image_format"] == {
        "kind": "categorical", "categories": ["jpeg", "png"], "counts": [300, 0],
        "source": "300 predictions",
    }  # fmt: skip
    site = {"site": ["a"] * 50 + ["b"] * 30 + ["c"] * 20}
    same = monitoring_report(TRAINING, baseline, {**site, **_capture(100, 600, 450)}, bounds)
    assert same["status"] == "ok"
    assert all(same["features"][n]["psi"] == 0.0 for n in CAPTURE_FEATURES)
    # Photos rescaled to the training copies' size: width and height, not aspect nor format.
    small = monitoring_report(TRAINING, baseline, {**site, **_capture(100, 200, 150)}, bounds)
    flagged = {n for n, f in small["features"].items() if f["flag"]}
    assert small["status"] == "drift" and flagged == {"image_width", "image_height"}
    # PNG exports of the same size: the format alone.
    png = monitoring_report(TRAINING, baseline, {**site, **_capture(100, 600, 450, "png")}, bounds)
    assert {n for n, f in png["features"].items() if f["flag"]} == {"image_format"}
    # Portrait photos: aspect (and the sides swapped).
    tall = monitoring_report(TRAINING, baseline, {**site, **_capture(100, 450, 600)}, bounds)
    assert tall["features"]["image_aspect"]["flag"]
    # Content still against the training reference, whatever the baseline.
    shifted = monitoring_report(
        TRAINING, baseline, {"site": ["c"] * 100, **_capture(100, 600, 450)}, bounds
    )
    assert {n for n, f in shifted["features"].items() if f["flag"]} == {"site"}
