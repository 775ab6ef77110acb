"""The metrics against scikit-learn on fixed cases, numpy helpers and torchmetrics states."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from contracts.labels import CLASS_INDEX, CLASSES
from contracts.metrics import (
    compute_metrics,
    confusion_matrix,
    metrics_from_confusion,
    per_class_rows,
)
from training.metrics import LesionMetrics

K = len(CLASSES)


def _case(seed: int, n: int = 300, absent: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax scores that agree with the labels more often than chance."""
    rng = np.random.default_rng(seed)
    labels = np.array([c for c in range(K) if c not in absent])
    y = rng.choice(
        labels, size=n, p=np.linspace(1, 3, len(labels)) / np.linspace(1, 3, len(labels)).sum()
    )
    logits = rng.normal(size=(n, K))
    logits[np.arange(n), y] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs.astype(np.float32)


def _sklearn(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    pred = probs.argmax(axis=1)
    labels = list(range(K))
    kw = {"labels": labels, "average": None, "zero_division": np.nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about classes absent from y_true
        out = {
            "accuracy": skm.accuracy_score(y, pred),
            "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        }
        for name, fn in (
            ("sensitivity", skm.recall_score),
            ("precision", skm.precision_score),
            ("f1", skm.f1_score),
        ):
            out.update({f"{name}_{c}": v for c, v in zip(CLASSES, fn(y, pred, **kw), strict=True)})
        for k, c in enumerate(CLASSES):
            # Specificity of class k = recall of "not k" in the one-vs-rest problem.
            out[f"specificity_{c}"] = skm.recall_score(y != k, pred != k, zero_division=np.nan)
    return out


def _assert_same(ours: dict[str, float], theirs: dict[str, float]) -> None:
    for key, expected in theirs.items():
        np.testing.assert_allclose(ours[key], expected, rtol=1e-6, err_msg=key, equal_nan=True)


def test_numpy_metrics_match_sklearn_on_all_classes() -> None:
    y, probs = _case(seed=0)
    metrics, cm = compute_metrics(y, probs)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, probs.argmax(1), labels=range(K)))
    _assert_same(metrics, _sklearn(y, probs))
    expected_auc = skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert metrics["auroc_macro"] == pytest.approx(expected_auc, rel=1e-9)
    # The melanoma figures are the per-class ones of "mel", also by name.
    mel = CLASS_INDEX["mel"]
    assert metrics["sensitivity_mel"] == pytest.approx(cm[mel, mel] / cm[mel].sum())


def test_numpy_metrics_match_sklearn_when_a_class_is_absent() -> None:
    y, probs = _case(seed=1, absent=(CLASS_INDEX["df"],))
    metrics, _ = compute_metrics(y, probs)
    _assert_same(metrics, _sklearn(y, probs))
    assert np.isnan(metrics["sensitivity_df"])
    # sklearn needs every class present for macro one-vs-rest AUC: compare on the present ones.
    present = [k for k in range(K) if k != CLASS_INDEX["df"]]
    per_class = [skm.roc_auc_score(y == k, probs[:, k]) for k in present]
    assert metrics["auroc_macro"] == pytest.approx(np.mean(per_class), rel=1e-9)


def test_auroc_with_tied_scores_matches_sklearn() -> None:
    y, probs = _case(seed=2, n=200)
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
    y, probs = _case(seed=3)
    _, cm = compute_metrics(y, probs)
    rows = per_class_rows(cm)
    assert [r["class"] for r in rows] == list(CLASSES)
    assert [r["support"] for r in rows] == np.bincount(y, minlength=K).tolist()
    sk_f1 = skm.f1_score(y, probs.argmax(1), labels=range(K), average=None)
    np.testing.assert_allclose([r["f1"] for r in rows], sk_f1, rtol=1e-9)


@pytest.mark.parametrize("absent", [(), (CLASS_INDEX["vasc"],)])
def test_torchmetrics_states_match_numpy_and_sklearn(absent: tuple[int, ...]) -> None:
    y, probs = _case(seed=4, absent=absent)
    metric = LesionMetrics()
    for chunk in np.array_split(np.arange(len(y)), 5):  # several batches, as in an epoch
        metric.update(torch.from_numpy(probs[chunk]), torch.from_numpy(y[chunk]))
    ours, cm = metric.compute()
    expected, expected_cm = compute_metrics(y, probs)
    np.testing.assert_array_equal(cm, expected_cm)
    _assert_same(ours, _sklearn(y, probs))
    assert ours["auroc_macro"] == pytest.approx(expected["auroc_macro"], rel=1e-5)
    metric.reset()
    metric.update(torch.from_numpy(probs[:10]), torch.from_numpy(y[:10]))
    assert metric.compute()[1].sum() == 10  # reset forgets the previous epoch


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="probs must be"):
        compute_metrics([0, 1], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix([0, 1], [0], K)
