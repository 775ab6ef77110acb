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
    point = th.choose_threshold(score, positive, 0.95)
    assert point.threshold == pytest.approx(0.10)
    assert point.val_sensitivity == pytest.approx(19 / 20)
    # Negatives below 0.10 are 0.0, 0.025, 0.05, 0.075: 4 of 20.
    assert point.val_specificity == pytest.approx(4 / 20)


def test_threshold_reaches_target_on_random_scores_and_is_the_highest_that_does():
    rng = np.random.default_rng(0)
    score = rng.random(500)
    positive = rng.random(500) < score  # higher scores are more often positive
    for target in (0.5, 0.8, 0.95, 1.0):
        point = th.choose_threshold(score, positive, target)
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
    }
    assert meta["malignant"]["val_specificity"] == pytest.approx(1.0)  # the nevus at 0.0


def test_no_positives_is_a_clear_error():
    with pytest.raises(DataError, match="no positive cases"):
        th.choose_threshold(np.array([0.1, 0.2]), np.array([False, False]))
