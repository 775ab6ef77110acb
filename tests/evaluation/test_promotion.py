import math

from training.evaluation.promotion import check_promotion

SERVED = {"balanced_accuracy": 0.72, "sensitivity_mel_op": 0.60}


def test_better_candidate_is_promoted():
    d = check_promotion({"balanced_accuracy": 0.75, "sensitivity_mel_op": 0.65}, SERVED)
    assert d.promote and d.passed and not d.forced
    assert all(c.passed for c in d.checks) and len(d.checks) == 2


def test_worse_melanoma_sensitivity_is_refused_and_named():
    d = check_promotion({"balanced_accuracy": 0.75, "sensitivity_mel_op": 0.55}, SERVED)
    assert not d.promote and not d.passed
    failed = [c for c in d.checks if not c.passed]
    assert [c.metric for c in failed] == ["sensitivity_mel_op"]
    assert "sensitivity_mel_op" in d.summary() and "refuse" in d.summary()


def test_small_drop_within_tolerance_passes_unless_the_interval_says_worse():
    cand = {"balanced_accuracy": 0.715, "sensitivity_mel_op": 0.60}
    assert check_promotion(cand, SERVED).promote
    interval = {"balanced_accuracy": (-0.009, -0.001)}
    d = check_promotion(cand, SERVED, differences=interval)
    assert not d.promote and "demonstrably worse" in d.checks[0].reason


def test_force_promotes_but_keeps_the_failure():
    d = check_promotion({"balanced_accuracy": 0.60, "sensitivity_mel_op": 0.60}, SERVED, force=True)
    assert d.promote and d.forced and not d.passed
    assert "forced" in d.summary()


def test_missing_metric_or_nothing_served():
    d = check_promotion({"balanced_accuracy": 0.9, "sensitivity_mel_op": math.nan}, SERVED)
    assert not d.promote and "undefined" in d.checks[1].reason
    assert check_promotion({"balanced_accuracy": 0.1}, None).promote


def test_custom_tolerances_gate_only_the_named_metrics():
    d = check_promotion(
        {"balanced_accuracy": 0.60, "sensitivity_mel_op": 0.60},
        SERVED,
        tolerances={"sensitivity_mel_op": 0.0},
    )
    assert d.promote and [c.metric for c in d.checks] == ["sensitivity_mel_op"]
