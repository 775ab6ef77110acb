"""The rule that places the gate's out-of-distribution threshold: the whole gate's false-refusal
rate on NEW lesion photos at most 1 % with 95 % confidence, shown on simulated draws."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.stats import beta, norm

from training.export.gate import (
    CONFIDENCE_RULE,
    CONFORMAL_RULE,
    GATE_CONFIDENCE,
    TARGET_FALSE_REFUSAL,
    choose_gate_threshold,
)
from training.export.ood import allowed_refusals


def _upper(r: int, n: int) -> float:
    return float(beta.ppf(GATE_CONFIDENCE, r + 1, n - r))


@pytest.mark.parametrize("n", [299, 300, 1000, 1376, 5000])
def test_allowed_refusals_is_the_largest_count_whose_upper_bound_holds(n):
    r = allowed_refusals(n, TARGET_FALSE_REFUSAL, GATE_CONFIDENCE)
    if r is None:
        assert _upper(0, n) > TARGET_FALSE_REFUSAL
        return
    assert _upper(r, n) <= TARGET_FALSE_REFUSAL < _upper(r + 1, n)


def test_allowed_refusals_on_the_validation_split_size():
    # The lesion-grouped validation split holds 1,376 images: 7 refusals (0.51 %) at most.
    assert allowed_refusals(1376, 0.01, 0.95) == 7
    assert allowed_refusals(199, 0.01, 0.95) is None  # too few to show 1 % with 95 %


def test_threshold_holds_one_percent_on_new_images_with_95_percent_confidence():
    """Thresholds chosen on 4,000 simulated validation splits of 1,000 scores: the true share of
    new images over each (normal scores: its survival function) exceeds 1 % in at most 5 % of
    the splits; the split-conformal quantile exceeds it in about half."""
    rng = np.random.default_rng(3)
    splits = rng.normal(size=(4000, 1000))
    everyone = np.ones(1000, bool)
    over_confident, over_conformal = [], []
    for scores in splits:
        threshold, rank, rule = choose_gate_threshold(scores, everyone)
        assert rule == CONFIDENCE_RULE
        assert rank == 1000 - allowed_refusals(1000, 0.01, 0.95)
        over_confident.append(norm.sf(threshold) > TARGET_FALSE_REFUSAL)
        cut = np.sort(scores)[int(np.ceil(1001 * 0.99)) - 1]  # the split-conformal quantile
        over_conformal.append(norm.sf(cut) > TARGET_FALSE_REFUSAL)
    assert np.mean(over_confident) <= 0.05
    assert np.mean(over_conformal) > 0.3


def test_quality_refusals_use_the_budget_first(caplog):
    scores = np.arange(1000.0)
    passed = np.ones(1000, bool)
    passed[[10, 20, 30]] = False  # three images the quality checks refuse
    allowed = allowed_refusals(1000, 0.01, 0.95)
    threshold, rank, _ = choose_gate_threshold(scores, passed)
    refused = np.sum(~passed | (scores > threshold))
    assert refused == allowed and rank == 997 - (allowed - 3)
    # More quality refusals than allowed: the score refuses none, with a warning.
    passed[:50] = False
    with caplog.at_level(logging.WARNING, logger="training.export.gate"):
        threshold, rank, rule = choose_gate_threshold(scores, passed)
    assert (threshold, rank, rule) == (999.0, 950, CONFIDENCE_RULE)
    assert "quality checks alone refuse 50 of 1000" in caplog.text


def test_few_images_fall_back_to_the_conformal_quantile(caplog):
    scores = np.arange(199.0)
    with caplog.at_level(logging.WARNING, logger="training.export.gate"):
        threshold, rank, rule = choose_gate_threshold(scores, np.ones(199, bool))
    assert rule == CONFORMAL_RULE and (threshold, rank) == (197.0, 198)
    assert "cannot be shown" in caplog.text
