import numpy as np
import pytest

from contracts.errors import DataError
from contracts.labels import CLASS_INDEX
from training.evaluation import thresholds as th

MEL, NV, BCC = CLASS_INDEX["mel"], CLASS_INDEX["nv"], CLASS_INDEX["bcc"]


def test_threshold_is_the_kth_highest_positive_score():
    # 20 positives scored 0.05..1.00 and 20 negatives scored 0.0..0.475: 95% of 20 is 19,
    # so the threshold is the 19th highest positive score, 0.10, and one positive is missed.
    pos = np.arange(1, 21) / 20
    neg = np.arange(20) / 40
    score = np.concatenate([pos, neg])
    positive = np.r_[np.ones(20, bool), np.zeros(20, bool)]
    point = th.choose_threshold(score, positive, 0.95, confidence=None)
    assert point.threshold == pytest.approx(0.10)
    assert point.val_sensitivity == pytest.approx(19 / 20)
    # Negatives below 0.10 are 0.0, 0.025, 0.05, 0.075: 4 of 20.
    assert point.val_specificity == pytest.approx(4 / 20)


def test_threshold_reaches_target_on_random_scores_and_is_the_highest_that_does():
    rng = np.random.default_rng(0)
    score = rng.random(500)
    positive = rng.random(500) < score  # higher scores are more often positive
    for target in (0.5, 0.8, 0.95, 1.0):
        point = th.choose_threshold(score, positive, target, confidence=None)
        assert point.val_sensitivity >= target
        higher = np.nextafter(point.threshold, 2.0)
        assert th.rates(score, positive, higher)[0] < target


def test_operating_points_score_mel_and_the_malignant_sum():
    probs = np.zeros((4, 7))
    probs[0, MEL], probs[0, NV] = 0.6, 0.4
    probs[1, BCC], probs[1, MEL], probs[1, NV] = 0.3, 0.3, 0.4
    probs[2, NV] = 1.0
    probs[3, MEL], probs[3, NV] = 0.2, 0.8
    labels = np.array([MEL, BCC, NV, MEL])
    points = th.operating_points(probs, labels, 1.0)
    assert points["mel"].threshold == pytest.approx(0.2)  # lowest P(mel) of a melanoma
    assert points["malignant"].threshold == pytest.approx(0.2)  # min of 0.6, 0.6, 0.2
    meta = th.thresholds_metadata(points)
    assert set(meta["mel"]) == {
        "threshold",
        "target_sensitivity",
        "val_sensitivity",
        "val_specificity",
        "rule",
        "confidence",
        "val_positives",
        "val_sensitivity_lower_bound",
    }
    assert meta["mel"]["rule"] == th.RULE and meta["mel"]["val_positives"] == 2
    assert meta["malignant"]["val_specificity"] == pytest.approx(1.0)  # the nevus at 0.0


def test_no_positives_is_a_clear_error():
    with pytest.raises(DataError, match="no positive cases"):
        th.choose_threshold(np.array([0.1, 0.2]), np.array([False, False]))


def test_confidence_rule_refers_until_the_lower_bound_reaches_the_target():
    # 163 positives with distinct scores (as many melanomas as the validation split holds):
    # hitting 0.95 needs 155 of them, a one-sided 95% lower bound of 0.95 needs 160.
    rng = np.random.default_rng(1)
    score = np.r_[rng.permutation(163) / 163 + 0.5, rng.random(400) * 0.5]
    positive = np.r_[np.ones(163, bool), np.zeros(400, bool)]
    exact = th.choose_threshold(score, positive, 0.95, confidence=None)
    point = th.choose_threshold(score, positive, 0.95, confidence=0.95)
    assert round(exact.val_sensitivity * 163) == 155
    assert round(point.val_sensitivity * 163) == 160
    assert point.val_sensitivity_lower_bound >= 0.95
    assert th.sensitivity_lower_bound(159, 163, 0.95) < 0.95  # one fewer would not do
    assert point.rule == th.RULE and point.confidence == 0.95 and point.val_positives == 163
    assert point.threshold < exact.threshold  # the price: a lower threshold


def test_confidence_rule_holds_the_target_on_new_cases_the_exact_rule_does_not():
    # Positives' scores uniform on [0, 1]: the true sensitivity of threshold t is 1 - t.
    # Over many validation draws, the exact rule reaches the target about half the time; the
    # lower-bound rule at least as often as its confidence says.
    rng = np.random.default_rng(2)
    held = {None: 0, 0.95: 0}
    draws = 400
    for _ in range(draws):
        score = rng.random(163)
        positive = np.ones(163, bool)
        for confidence in held:
            point = th.choose_threshold(score, positive, 0.95, confidence=confidence)
            held[confidence] += (1 - point.threshold) >= 0.95
    assert held[0.95] / draws >= 0.95
    assert held[None] / draws <= 0.75


def test_too_few_positives_refer_all_and_say_the_bound_falls_short():
    score = np.r_[np.linspace(0.5, 1.0, 20), np.zeros(5)]
    positive = np.r_[np.ones(20, bool), np.zeros(5, bool)]
    point = th.choose_threshold(score, positive, 0.95, confidence=0.95)
    assert point.val_sensitivity == 1.0
    assert point.threshold == pytest.approx(0.5)
    assert point.val_sensitivity_lower_bound < 0.95


def test_stored_points_round_trip_and_old_entries_read_as_the_exact_rule():
    score = np.r_[np.linspace(0.5, 1.0, 50), np.linspace(0, 0.6, 50)]
    positive = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    points = {t: th.choose_threshold(score, positive, 0.9) for t in th.TARGETS}
    assert th.points_from_metadata(th.thresholds_metadata(points)) == points
    old = {t: {"threshold": 0.2, "target_sensitivity": 0.95} for t in th.TARGETS}
    assert th.points_from_metadata(old)["mel"].rule == th.EXACT_RULE


def test_score_reports_the_specificity_the_confidence_costs():
    """``scoring.score``'s hindsight specificity: where these cases' own sensitivity first
    reaches the target, read off sklearn's ROC (not this module's threshold search); with 200
    melanomas it lies above the confident operating point's, which refers more."""
    import pandas as pd
    from sklearn.metrics import roc_curve

    from contracts.labels import CLASSES
    from training.evaluation.scoring import Cases, score

    rng = np.random.default_rng(3)
    labels = np.r_[np.full(200, MEL), np.full(600, NV), np.full(100, BCC)]
    logits = rng.normal(0.0, 1.0, (labels.size, 7))
    logits[np.arange(labels.size), labels] += 2.0  # informative, far from perfect
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    points = th.operating_points(probs, labels)  # chosen on these cases, with confidence
    frame = pd.DataFrame(
        {"label": [CLASSES[i] for i in labels], "group": [f"g{i}" for i in range(labels.size)]}
    )
    sc = score("synthetic", probs, Cases(frame), points, n_resamples=0)
    for target, hindsight, at_op in (
        ("mel", sc.specificity_mel_hindsight, sc.specificity_mel_op),
        ("malignant", sc.specificity_malignant_hindsight, sc.specificity_malignant_op),
    ):
        fpr, tpr, _ = roc_curve(
            th.positives(labels, target), th.scores(probs, target), drop_intermediate=False
        )
        assert hindsight == pytest.approx(1.0 - fpr[np.argmax(tpr >= 0.95)]), target
        assert at_op < hindsight, target
