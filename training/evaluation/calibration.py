"""Calibration: expected calibration error and temperature scaling.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar ``T`` fitted on the
validation split. It changes confidence, never the argmax, so accuracy is untouched. The NLL
is convex in ``1/T`` (a log-sum-exp of a linear function minus a linear term), so a bounded
1-D search finds the global minimum: no learning rate, no LBFGS restarts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from contracts.errors import DataError

N_BINS = 15
# Inverse temperatures searched: T from 0.05 (sharpen 20x) to 20 (flatten 20x).
_BETA_BOUNDS = (0.05, 20.0)


@dataclass(frozen=True)
class ReliabilityBins:
    """Per confidence bin: mean confidence, accuracy and count (empty bins have count 0)."""

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> ReliabilityBins:
    """Bin the top-label confidence into ``n_bins`` equal-width bins over (0, 1]."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Right-closed bins (lo, hi]: a confidence of exactly 1.0 lands in the last bin.
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, conf, minlength=n_bins) / count
        accuracy = np.bincount(which, correct, minlength=n_bins) / count
    return ReliabilityBins(edges, mean_conf, accuracy, count.astype(np.int64))


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS
) -> float:
    """Top-label ECE: sum over bins of (bin share) * |accuracy - mean confidence|."""
    bins = reliability(probs, labels, n_bins)
    used = bins.count > 0
    if not used.any():
        raise DataError("cannot compute a calibration error on zero cases")
    gap = np.abs(bins.accuracy[used] - bins.confidence[used])
    return float((bins.count[used] * gap).sum() / bins.count.sum())


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), np.asarray(labels)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T > 0`` minimising the NLL of ``softmax(logits / T)`` on these cases.

    Args:
        logits: ``[N, C]`` raw model outputs (before softmax) on the validation split.
        labels: ``[N]`` true class indices.

    Raises:
        DataError: empty or misshapen input.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or len(logits) == 0 or len(labels) != len(logits):
        raise DataError(
            f"temperature scaling needs logits [N, C] and N labels, got {logits.shape} and "
            f"{labels.shape}"
        )
    picked = logits[np.arange(len(labels)), labels]

    def objective(beta: float) -> float:
        z = beta * logits
        top = z.max(axis=1)
        lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
        return float((lse - beta * picked).mean())

    result = minimize_scalar(
        objective, bounds=_BETA_BOUNDS, method="bounded", options={"xatol": 1e-6}
    )
    return float(1.0 / result.x)


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(logits / temperature)`` as float64 probabilities."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
