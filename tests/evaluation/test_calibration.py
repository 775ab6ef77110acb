import numpy as np
import pytest
from scipy.special import softmax

from training.evaluation import calibration as cal


def _overconfident(temperature: float, n: int = 20000, seed: int = 0):
    """Labels drawn from softmax(z); the 'model' reports z * temperature (overconfident)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, 7))
    p = softmax(z, axis=1)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return z * temperature, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_temperature_recovers_a_known_temperature(true_t):
    logits, labels = _overconfident(true_t)
    assert cal.fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


def test_scaling_lowers_ece_and_nll_and_keeps_argmax():
    logits, labels = _overconfident(2.5)
    t = cal.fit_temperature(logits, labels)
    before = cal.apply_temperature(logits, 1.0)
    after = cal.apply_temperature(logits, t)
    assert cal.expected_calibration_error(after, labels) < 0.5 * cal.expected_calibration_error(
        before, labels
    )
    assert cal.nll(logits, labels, t) < cal.nll(logits, labels, 1.0)
    assert (after.argmax(1) == before.argmax(1)).all()


def test_ece_known_answer():
    # Two cases at confidence 0.9 (one right: bin accuracy 0.5, gap 0.4) and two at 0.6
    # (both right: gap 0.4): ECE = 0.4. A perfectly calibrated bin adds nothing.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    assert cal.expected_calibration_error(probs, labels) == pytest.approx(0.4)
    assert cal.expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0])) == 0.0
    bins = cal.reliability(probs, labels)
    assert bins.count.sum() == 4 and bins.count[-1] == 0  # 0.9 is in (0.867, 0.933]
