"""The torchmetrics states of training against the numpy metrics and scikit-learn
(the numpy metrics themselves: tests/contracts/test_metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contracts.labels import CLASS_INDEX
from contracts.metrics import compute_metrics
from tests.metrics_reference import assert_same, case, sklearn_metrics
from training.metrics import LesionMetrics


@pytest.mark.parametrize("absent", [(), (CLASS_INDEX["vasc"],)])
def test_torchmetrics_states_match_numpy_and_sklearn(absent: tuple[int, ...]) -> None:
    y, probs = case(seed=4, absent=absent)
    metric = LesionMetrics()
    for chunk in np.array_split(np.arange(len(y)), 5):  # several batches, as in an epoch
        metric.update(torch.from_numpy(probs[chunk]), torch.from_numpy(y[chunk]))
    ours, cm = metric.compute()
    expected, expected_cm = compute_metrics(y, probs)
    np.testing.assert_array_equal(cm, expected_cm)
    assert_same(ours, sklearn_metrics(y, probs))
    assert ours["auroc_macro"] == pytest.approx(expected["auroc_macro"], rel=1e-5)
    metric.reset()
    metric.update(torch.from_numpy(probs[:10]), torch.from_numpy(y[:10]))
    assert metric.compute()[1].sum() == 10  # reset forgets the previous epoch
