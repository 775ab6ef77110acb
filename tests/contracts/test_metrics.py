"""The numpy metrics against scikit-learn on fixed cases and a confusion matrix worked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from contracts.labels import CLASS_INDEX, CLASSES
from contracts.metrics import (
    compute_metrics,
    confusion_matrix,
    metrics_from_confusion,
    per_class_rows,
)
from tests.metrics_reference import K, assert_same, case, sklearn_metrics


def test_numpy_metrics_match_sklearn_on_all_classes() -> None:
    y, probs = case(seed=0)
    metrics, cm = compute_metrics(y, probs)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, probs.argmax(1), labels=range(K)))
    assert_same(metrics, sklearn_metrics(y, probs))
    expected_auc = skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert metrics["auroc_macro"] == pytest.approx(expected_auc, rel=1e-9)
    # The melanoma figures are the per-class ones of "mel", also by name.
    mel = CLASS_INDEX["mel"]
    assert metrics["sensitivity_mel"] == pytest.approx(cm[mel, mel] / cm[mel].sum())


def test_numpy_metrics_match_sklearn_when_a_class_is_absent() -> None:
    y, probs = case(seed=1, absent=(CLASS_INDEX["df"],))
    metrics, _ = compute_metrics(y, probs)
    assert_same(metrics, sklearn_metrics(y, probs))
    assert np.isnan(metrics["sensitivity_df"])
    # sklearn needs every class present for macro one-vs-rest AUC: compare on the present ones.
    present = [k for k in range(K) if k != CLASS_INDEX["df"]]
    per_class = [skm.roc_auc_score(y == k, probs[:, k]) for k in present]
    assert metrics["auroc_macro"] == pytest.approx(np.mean(per_class), rel=1e-9)


def test_auroc_with_tied_scores_matches_sklearn() -> None:
    y, probs = case(seed=2, n=200)
    coarse = np.round(probs, 1)  # many ties
    metrics, _ = compute_metrics(y, coarse)
    expected = np.mean([skm.roc_auc_score(y == k, coarse[:, k]) for k in range(K)])
    assert metrics["auroc_macro"] == pytest.approx(expected, rel=1e-9)


def test_hand_computed_confusion_matrix() -> None:
    # 4 melanomas (3 found), 6 nevi (1 called melanoma); nothing else.
    y = [CLASS_INDEX["mel"]] * 4 + [CLASS_INDEX["nv"]] * 6
    pred = (
        [CLASS_INDEX["mel"]] * 3
        + [CLASS_INDEX["nv"]] * 2
        + [CLASS_INDEX["mel"]]
        + [CLASS_INDEX["nv"]] * 4
    )
    m = metrics_from_confusion(confusion_matrix(y, pred, K))
    assert m["sensitivity_mel"] == pytest.approx(3 / 4)
    assert m["specificity_mel"] == pytest.approx(5 / 6)
    assert m["precision_mel"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert np.isnan(m["precision_akiec"])  # never predicted, never present


def test_per_class_rows_carry_support() -> None:
    y, probs = case(seed=3)
    _, cm = compute_metrics(y, probs)
    rows = per_class_rows(cm)
    assert [r["class"] for r in rows] == list(CLASSES)
    assert [r["support"] for r in rows] == np.bincount(y, minlength=K).tolist()
    sk_f1 = skm.f1_score(y, probs.argmax(1), labels=range(K), average=None)
    np.testing.assert_allclose([r["f1"] for r in rows], sk_f1, rtol=1e-9)


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="probs must be"):
        compute_metrics([0, 1], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix([0, 1], [0], K)
