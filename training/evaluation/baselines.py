"""Baselines a CNN must beat to be worth its images.

- majority: always the most frequent training class (probabilities = the training prior).
- demographic: no image at all; the most likely class given body site, age band and sex,
  from TRAINING split counts, smoothed by backing off to the site alone, then to the prior.
  If the CNN barely beats this, it is reading the metadata's correlates, not the lesion.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from contracts.errors import DataError
from contracts.labels import CLASS_INDEX, CLASSES, NUM_CLASSES, UNKNOWN_SITE

# Upper edges of the age bands; HAM10000 ages are multiples of 5 from 0 to 85.
_AGE_EDGES: tuple[tuple[float, str], ...] = (
    (30, "<30"),
    (45, "30-44"),
    (60, "45-59"),
    (75, "60-74"),
    (math.inf, "75+"),
)
AGE_BANDS: tuple[str, ...] = (*(name for _, name in _AGE_EDGES), "unknown")


def age_band(age: float | None) -> str:
    """The age band of an age in years; ``unknown`` for a missing age."""
    if age is None or pd.isna(age):
        return "unknown"
    return next(name for edge, name in _AGE_EDGES if age < edge)


def label_indices(labels: pd.Series | np.ndarray) -> np.ndarray:
    """Class indices from class names (``mel``) or indices, checked against the contract."""
    values = np.asarray(labels)
    if values.dtype.kind in "iu":
        if values.size and (values.min() < 0 or values.max() >= NUM_CLASSES):
            raise DataError(f"label indices must be in 0..{NUM_CLASSES - 1}")
        return values.astype(np.int64)
    unknown = sorted({str(v) for v in values} - set(CLASSES))
    if unknown:
        raise DataError(f"unknown labels {unknown[:5]}; expected one of {', '.join(CLASSES)}")
    return np.array([CLASS_INDEX[str(v)] for v in values], dtype=np.int64)


def _keys(frame: pd.DataFrame) -> pd.DataFrame:
    missing = {"site", "age", "sex"} - set(frame.columns)
    if missing:
        raise DataError(f"the demographic baseline needs columns {sorted(missing)}")
    return pd.DataFrame(
        {
            "site": frame["site"].fillna(UNKNOWN_SITE).astype(str).to_numpy(),
            "band": [age_band(a) for a in frame["age"]],
            "sex": frame["sex"].fillna("unknown").astype(str).to_numpy(),
        }
    )


def _counts(keys: pd.DataFrame, labels: np.ndarray, by: list[str]) -> pd.DataFrame:
    onehot = pd.DataFrame(np.eye(NUM_CLASSES)[labels], columns=list(CLASSES))
    return pd.concat([keys[by], onehot], axis=1).groupby(by).sum()


class MajorityBaseline:
    """Predicts the most frequent training class; its probabilities are the training prior."""

    def fit(self, labels: pd.Series | np.ndarray) -> MajorityBaseline:
        counts = np.bincount(label_indices(labels), minlength=NUM_CLASSES).astype(np.float64)
        if counts.sum() == 0:
            raise DataError("cannot fit a baseline on an empty training split")
        self.prior_ = counts / counts.sum()
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return np.tile(self.prior_, (len(frame), 1))


class DemographicBaseline:
    """P(class | site, age band, sex) from training counts, backed off to site, then prior.

    ``P(c | cell) = (n(cell, c) + m * P(c | site)) / (n(cell) + m)`` and
    ``P(c | site) = (n(site, c) + m * P(c)) / (n(site) + m)``, with a Laplace-smoothed prior.
    An unseen cell falls back exactly to its site, an unseen site to the prior; ``m``
    (``strength``) is how many training cases a cell needs before its own counts dominate.

    Args:
        strength: the back-off pseudo-count ``m`` (> 0).
    """

    def __init__(self, strength: float = 10.0) -> None:
        if strength <= 0:
            raise ValueError(f"strength must be > 0, got {strength}")
        self.strength = strength

    def fit(self, frame: pd.DataFrame) -> DemographicBaseline:
        """Count classes per site and per (site, age band, sex) on the training split."""
        labels = label_indices(frame["label"])
        if labels.size == 0:
            raise DataError("cannot fit a baseline on an empty training split")
        keys = _keys(frame)
        counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
        self.prior_ = (counts + 1.0) / (counts.sum() + NUM_CLASSES)
        self.site_counts_ = _counts(keys, labels, ["site"])
        self.cell_counts_ = _counts(keys, labels, ["site", "band", "sex"])
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """``[N, 7]`` probabilities for the rows of ``frame`` (columns site, age, sex)."""
        keys = _keys(frame)
        m = self.strength
        site = self.site_counts_.reindex(keys["site"]).fillna(0.0).to_numpy()
        p_site = (site + m * self.prior_) / (site.sum(axis=1, keepdims=True) + m)
        index = pd.MultiIndex.from_frame(keys[["site", "band", "sex"]])
        cell = self.cell_counts_.reindex(index).fillna(0.0).to_numpy()
        return (cell + m * p_site) / (cell.sum(axis=1, keepdims=True) + m)
