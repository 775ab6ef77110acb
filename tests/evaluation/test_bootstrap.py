import numpy as np
import pytest

from contracts.labels import CLASS_INDEX, NUM_CLASSES
from contracts.metrics import confusion_matrix, metrics_from_confusion
from training.evaluation import bootstrap as bs

MEL = CLASS_INDEX["mel"]


def test_point_estimates_match_sklearn():
    from sklearn.metrics import balanced_accuracy_score, recall_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 7, 300)
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 7, 300))
    assert bs.point(bs.balanced_accuracy(y, pred), 300) == pytest.approx(
        balanced_accuracy_score(y, pred)
    )
    sens = bs.point(bs.sensitivity(y == MEL, pred == MEL), 300)
    assert sens == pytest.approx(recall_score(y == MEL, pred == MEL))


@pytest.mark.parametrize("absent", [(), (3,), (0, 6)])
def test_unit_weights_give_the_one_balanced_accuracy(absent):
    """The weighted form is contracts.metrics' balanced accuracy, absent classes included."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, NUM_CLASSES, 200)
    y = y[~np.isin(y, absent)]
    pred = np.where(rng.random(len(y)) < 0.5, y, rng.integers(0, NUM_CLASSES, len(y)))
    expected = metrics_from_confusion(confusion_matrix(y, pred, NUM_CLASSES))["balanced_accuracy"]
    assert bs.point(bs.balanced_accuracy(y, pred), len(y)) == pytest.approx(expected, abs=1e-12)


def test_resampling_draws_whole_lesions():
    groups = np.array(["a", "a", "a", "b", "c", "c"])
    w = bs.resample_weights(groups, 50, seed=0)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 1] == w[:, 2]).all() and (w[:, 4] == w[:, 5]).all()
    # Three lesions are drawn per resample, whatever their sizes.
    assert ((w[:, 0] + w[:, 3] + w[:, 4]) == 3).all()


def test_interval_covers_estimate_and_is_seeded():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(150), 2)
    y = rng.integers(0, 7, 300)
    pred = np.where(rng.random(300) < 0.7, y, 5)
    metric = bs.balanced_accuracy(y, pred)
    ci = bs.bootstrap_ci(metric, groups, n_resamples=400, seed=3)
    assert ci.low < ci.estimate < ci.high
    assert ci == bs.bootstrap_ci(metric, groups, n_resamples=400, seed=3)
    assert ci != bs.bootstrap_ci(metric, groups, n_resamples=400, seed=4)


def test_lesion_resampling_is_wider_than_image_resampling_for_correlated_images():
    # 40 lesions with 10 images each; a lesion is either all right or all wrong. Treating
    # the 400 images as independent understates the uncertainty by about sqrt(10).
    rng = np.random.default_rng(5)
    lesion_right = rng.random(40) < 0.5
    right = np.repeat(lesion_right, 10)
    y = np.full(400, MEL)
    flagged = right
    metric = bs.sensitivity(y == MEL, flagged)
    by_lesion = bs.bootstrap_ci(metric, np.repeat(np.arange(40), 10), seed=0)
    by_image = bs.bootstrap_ci(metric, np.arange(400), seed=0)
    assert (by_lesion.high - by_lesion.low) > 2.5 * (by_image.high - by_image.low)


def test_paired_difference_of_identical_models_is_zero_and_of_a_better_model_positive():
    rng = np.random.default_rng(6)
    groups = np.repeat(np.arange(200), 3)
    y = rng.integers(0, 7, 600)
    pred = np.where(rng.random(600) < 0.5, y, 5)
    better = np.where(rng.random(600) < 0.5, y, pred)  # fixes about half the mistakes
    a = bs.balanced_accuracy(y, pred)
    same = bs.paired_bootstrap(a, bs.balanced_accuracy(y, pred.copy()), groups, 300, seed=0)
    assert same.contains(0.0) and same.estimate == 0.0
    gain = bs.paired_bootstrap(a, bs.balanced_accuracy(y, better), groups, 300, seed=0)
    assert gain.low > 0


def test_undefined_resamples_are_counted_not_averaged():
    # One melanoma lesion among 30: about a third of resamples draw no melanoma at all.
    y = np.r_[MEL, np.zeros(29, int)]
    ci = bs.bootstrap_ci(bs.sensitivity(y == MEL, y == MEL), np.arange(30), 300, seed=0)
    assert 50 < ci.undefined < 150
    assert ci.low == ci.high == ci.estimate == 1.0
