"""Metric cases and scikit-learn's answers to them: the reference that the numpy metrics
(tests/contracts) and training's torchmetrics states (tests/training) are checked against."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as skm

from contracts.labels import CLASSES

K = len(CLASSES)


def case(seed: int, n: int = 300, absent: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
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


def sklearn_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """scikit-learn's figures, named as ours (specificity: recall of the one-vs-rest negatives)."""
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


def assert_same(ours: dict[str, float], theirs: dict[str, float]) -> None:
    for key, expected in theirs.items():
        np.testing.assert_allclose(ours[key], expected, rtol=1e-6, err_msg=key, equal_nan=True)
