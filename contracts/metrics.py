"""Classification metrics for the lesion classes: one definition for training and evaluation.

Every per-class figure is a function of one confusion matrix (rows = true class, columns =
predicted class), so the numbers logged during training (torchmetrics states, summed across
DDP processes) and those computed offline from numpy arrays (:func:`compute_metrics`) cannot
disagree. Undefined ratios (a class absent from the labels, a class never predicted) are NaN,
like scikit-learn's ``zero_division=np.nan``; the balanced accuracy averages the recall of the
classes that occur, like ``sklearn.metrics.balanced_accuracy_score``.

Names: ``accuracy``, ``balanced_accuracy`` (macro recall), ``auroc_macro`` (one-vs-rest),
``sensitivity_<cls>``, ``specificity_<cls>``, ``precision_<cls>``, ``f1_<cls>``. Logged with a
``stage/`` prefix (``val/sensitivity_mel``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

from contracts.labels import CLASSES

PER_CLASS = ("sensitivity", "specificity", "precision", "f1")
# Class indices, as a list or an integer array.
Labels = Sequence[int] | np.ndarray


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def macro_mean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def confusion_matrix(y_true: Labels, y_pred: Labels, num_classes: int) -> np.ndarray:
    """Counts ``[num_classes, num_classes]``: row = true class, column = predicted class."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    flat = y_true * num_classes + y_pred
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class ``sensitivity``, ``specificity``, ``precision``, ``f1`` and ``support``."""
    cm = np.asarray(cm, dtype=np.float64)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    fn, fp = support - tp, predicted - tp
    tn = cm.sum() - tp - fn - fp
    return {
        "sensitivity": _ratio(tp, support),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, predicted),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "support": support.astype(np.int64),
    }


def metrics_from_confusion(cm: np.ndarray, classes: Sequence[str] = CLASSES) -> dict[str, float]:
    """Accuracy, balanced accuracy and the per-class figures, named as logged (no prefix)."""
    cm = np.asarray(cm)
    if cm.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix {cm.shape} does not match {len(classes)} classes")
    per = per_class_from_confusion(cm)
    out = {
        "accuracy": float(np.trace(cm) / cm.sum()) if cm.sum() else float("nan"),
        "balanced_accuracy": macro_mean(per["sensitivity"]),  # NaN = class absent: skipped
    }
    for name in PER_CLASS:
        out.update({f"{name}_{c}": float(v) for c, v in zip(classes, per[name], strict=True)})
    return out


def auroc_per_class(y_true: Labels, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per class (Mann-Whitney U with tied scores averaged).

    NaN for a class with no positive or no negative example.
    """
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    out = np.full(probs.shape[1], np.nan)
    for k in range(probs.shape[1]):
        positive = y_true == k
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos and n_neg:
            ranks = rankdata(probs[:, k])
            out[k] = (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def compute_metrics(
    y_true: Labels, probs: np.ndarray, classes: Sequence[str] = CLASSES
) -> tuple[dict[str, float], np.ndarray]:
    """All metrics from labels and predicted probabilities ``[N, C]`` (argmax decisions).

    Returns:
        ``(metrics, confusion_matrix)``; metrics are named as logged, without a stage prefix.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"probs must be [N, {len(classes)}], got {list(probs.shape)}")
    cm = confusion_matrix(y_true, probs.argmax(axis=1), len(classes))
    metrics = metrics_from_confusion(cm, classes)
    metrics["auroc_macro"] = macro_mean(auroc_per_class(y_true, probs))
    return metrics, cm


def per_class_rows(cm: np.ndarray, classes: Sequence[str] = CLASSES) -> list[dict[str, object]]:
    """One row per class: ``class, sensitivity, specificity, precision, f1, support``."""
    per = per_class_from_confusion(cm)
    return [
        {"class": c, **{k: float(per[k][i]) for k in PER_CLASS}, "support": int(per["support"][i])}
        for i, c in enumerate(classes)
    ]
