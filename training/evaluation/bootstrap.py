"""Bootstrap confidence intervals that resample LESIONS, not images.

Images of one lesion are correlated (same lesion, often the same session): resampling images
would treat them as independent evidence and give intervals that are too narrow. Each
resample draws lesions with replacement and keeps all their images, expressed as integer
weights per image (weight = how many times its lesion was drawn). Metrics are written as
functions of those weights, so 1000 resamples are a few matrix products.

A metric here is a callable ``weights [B, N] -> values [B]``; weights of ones give the point
estimate. The factories below build the ones the report needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from contracts.errors import DataError
from contracts.labels import NUM_CLASSES

WeightedMetric = Callable[[np.ndarray], np.ndarray]
N_RESAMPLES = 1000
# Resamples per chunk: bounds memory at chunk * N floats (N = images in the split).
_CHUNK = 100


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval.

    ``undefined`` counts resamples where the metric had no cases (e.g. no melanoma drawn);
    they are left out of the percentiles.
    """

    estimate: float
    low: float
    high: float
    level: float = 0.95
    n_resamples: int = N_RESAMPLES
    undefined: int = 0

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _per_class_recall(y_true: np.ndarray, hit: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``weights [B, N] -> recall [B, C]`` (NaN for a class with no weight)."""
    onehot = np.eye(NUM_CLASSES)[np.asarray(y_true)]  # [N, C]
    hits = onehot * np.asarray(hit, dtype=np.float64)[:, None]

    def recall(weights: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights @ hits) / (weights @ onehot)

    return recall


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> WeightedMetric:
    """Mean recall over the classes present, as a function of lesion weights.

    With every weight 1 it equals :func:`contracts.metrics.metrics_from_confusion`'s
    ``balanced_accuracy`` (the one definition, shared with training); this weighted form
    exists so that a thousand resamples are matrix products.
    """
    recall = _per_class_recall(y_true, np.asarray(y_true) == np.asarray(y_pred))

    def metric(weights: np.ndarray) -> np.ndarray:
        # A class no drawn lesion has is left out, as sklearn leaves out absent classes.
        return np.nanmean(recall(weights), axis=1)

    return metric


def sensitivity(positive: np.ndarray, flagged: np.ndarray) -> WeightedMetric:
    """Share of positive cases that are flagged (recall of one class or group)."""
    positive = np.asarray(positive, dtype=np.float64)
    caught = positive * np.asarray(flagged, dtype=np.float64)

    def metric(weights: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights @ caught) / (weights @ positive)

    return metric


def specificity(positive: np.ndarray, flagged: np.ndarray) -> WeightedMetric:
    """Share of negative cases that are not flagged."""
    return sensitivity(~np.asarray(positive, dtype=bool), ~np.asarray(flagged, dtype=bool))


def resample_weights(groups: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """``[n_resamples, N]`` image weights: each row draws ``G`` lesions with replacement."""
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_resamples)
    return counts[:, codes].astype(np.float64)


def _resampled(
    metrics: list[WeightedMetric], groups: np.ndarray, n_resamples: int, seed: int
) -> list[np.ndarray]:
    groups = np.asarray(groups)
    if groups.size == 0:
        raise DataError("cannot bootstrap an empty split")
    out: list[list[np.ndarray]] = [[] for _ in metrics]
    # One generator per chunk, seeded from the seed: same draws whatever the chunk size.
    seeds = np.random.SeedSequence(seed).spawn(-(-n_resamples // _CHUNK))
    for i, chunk_seed in enumerate(seeds):
        size = min(_CHUNK, n_resamples - i * _CHUNK)
        weights = resample_weights(groups, size, int(chunk_seed.generate_state(1)[0]))
        for values, metric in zip(out, metrics, strict=True):
            values.append(metric(weights))
    return [np.concatenate(v) for v in out]


def _interval(estimate: float, values: np.ndarray, level: float) -> Interval:
    ok = values[~np.isnan(values)]
    if ok.size == 0:
        return Interval(estimate, np.nan, np.nan, level, values.size, values.size)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(ok, [alpha, 1.0 - alpha])
    return Interval(estimate, float(low), float(high), level, values.size, values.size - ok.size)


def point(metric: WeightedMetric, n: int) -> float:
    """The metric on the split as it is (every image weighted once)."""
    return float(metric(np.ones((1, n)))[0])


def bootstrap_ci(
    metric: WeightedMetric,
    groups: np.ndarray,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """Percentile interval of ``metric`` over lesion resamples.

    Args:
        metric: ``weights [B, N] -> [B]``, e.g. ``balanced_accuracy(y, pred)``.
        groups: ``[N]`` lesion id of each image (``group`` column of the split).
        n_resamples: number of bootstrap resamples.
        seed: makes the interval reproducible.
        level: coverage of the interval.
    """
    (values,) = _resampled([metric], groups, n_resamples, seed)
    return _interval(point(metric, len(groups)), values, level)


def paired_bootstrap(
    metric_a: WeightedMetric,
    metric_b: WeightedMetric,
    groups: np.ndarray,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """Interval of ``metric_b - metric_a`` with both models scored on the SAME resamples.

    Pairing removes the case-mix noise the two models share, so the interval is far
    narrower than the difference of two independent intervals. Zero inside the interval
    means the split cannot tell the models apart on this metric.
    """
    a, b = _resampled([metric_a, metric_b], groups, n_resamples, seed)
    n = len(groups)
    return _interval(point(metric_b, n) - point(metric_a, n), b - a, level)
