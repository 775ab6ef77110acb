"""Drift of recent predictions against the training data's reference: pure functions.

Each feature of the reference (``training.reference_stats``) is a histogram that carries its
own bins. A window of recent values is binned the same way and compared with two figures:

- the population stability index, ``PSI = sum((q - p) * ln(q / p))`` over bins, with
  reference shares ``p`` and window shares ``q``, each smoothed by half a count per bin
  (``PSEUDO_COUNT``, Jeffreys' prior). Smoothing keeps an empty bin finite; half a count
  rather than a tiny floor, because with a floor of 1e-4 every bin a window of 80 has not
  filled yet costs ``p * ln(p / 1e-4)``, which on HAM10000 added about 0.1 of PSI to
  windows drawn from the training distribution itself; and
- a two-sample chi-square test of homogeneity on the same bins (a 2 x k contingency table,
  sparse bins pooled; Fisher's exact test where pooling would leave a single bin).

A feature is flagged only when the window holds at least ``min_window`` values, its PSI
exceeds the bound AND the test's p-value is below ``p_value``. PSI alone is biased upwards
in small windows (about ``(k - 1) / n`` under no drift for ``k`` bins), which the test
accounts for; the test alone flags trivial shifts in large windows, which PSI does not.

Features come in two groups (:func:`monitoring_report`). CONTENT features (what a photo shows
and what the model made of it: body site, brightness and contrast of the model input,
predicted class, confirmed diagnosis) are compared with the training reference. CAPTURE
features (how a photo was taken: width, height, aspect ratio, file format) are compared with
a baseline the operator froze from the clinic's own traffic (:func:`capture_baseline`),
never with the training data: HAM10000's copies are all 200 x 150 while a dermatoscope sends
600 x 450 and larger, so against them every clinic would drift from the first hour. Until a
baseline is frozen, capture features say so (``no baseline``) and never count as drift.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
from scipy.stats import chi2_contingency, fisher_exact

PSEUDO_COUNT = 0.5
MIN_EXPECTED = 5.0
OTHER = "(other)"
INSUFFICIENT = "insufficient data"
NO_BASELINE = "no baseline"
# How a photo was taken: compared with the operator's frozen baseline, never with training.
CAPTURE_FEATURES = ("image_width", "image_height", "image_aspect", "image_format")
# Bins of the capture baseline (the training reference's size bins, training.reference_stats).
SIZE_EDGES = (0.0, 128, 256, 384, 512, 640, 768, 1024, 1536, 2048, 3072, 4096, 8192)
# Width / height: 4:3 (1.33), 3:2 (1.5) and 16:9 (1.78) in bins of their own, portrait below 1.
ASPECT_EDGES = (0.0, 0.5, 0.7, 0.8, 0.9, 1.1, 1.25, 1.4, 1.6, 1.85, 2.5, 1000.0)
IMAGE_FORMATS = ("jpeg", "png")
# Counts per bin, as a list or an array.
Counts = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class DriftBounds:
    """When a feature counts as drifted."""

    psi: float = 0.2
    p_value: float = 0.01
    min_window: int = 50


def histogram(values: Sequence[float] | np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts of ``values`` in the bins ``[edges[i], edges[i+1])``.

    Values below the first edge count in the first bin, values at or above the last edge in
    the last one, so every finite value is counted; NaN is dropped.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    n_bins = len(edges) - 1
    if n_bins < 1:
        raise ValueError(f"a histogram needs at least two edges, got {list(edges)}")
    index = np.clip(
        np.searchsorted(np.asarray(edges, dtype=np.float64), x, "right") - 1, 0, n_bins - 1
    )
    return np.bincount(index, minlength=n_bins).astype(np.int64)


def psi(reference: Counts, window: Counts, pseudo_count: float = PSEUDO_COUNT) -> float:
    """Population stability index of ``window`` counts against ``reference`` counts, both
    smoothed by ``pseudo_count`` per bin. Bins empty in both carry no information and are
    left out (smoothing them would add a bias that grows with the number of fixed bins)."""
    p, q = np.asarray(reference, dtype=np.float64), np.asarray(window, dtype=np.float64)
    if p.shape != q.shape or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError(f"need two non-empty count vectors of one shape, got {p} and {q}")
    used = (p + q) > 0
    p, q = p[used] + pseudo_count, q[used] + pseudo_count
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum((q - p) * np.log(q / p)))


def chi_square(
    reference: Counts, window: Counts, min_expected: float = MIN_EXPECTED
) -> tuple[float, int, float]:
    """Two-sample chi-square test of homogeneity: ``(statistic, dof, p_value)``.

    The chi-square approximation needs about 5 expected values per cell (Cochran's rule):
    bins where the window is expected to hold fewer are pooled into one bin (folded into the
    smallest other bin if the pool is still too small). Without pooling, one photo from a
    rare body site (acral: 4 of 6,331 training images) in a window of 80 gave p < 0.01 in
    12 % of windows drawn from HAM10000's own validation split. With fewer than two bins
    left there is nothing to test (statistic 0, p-value 1).

    One case pooling cannot serve: every sparse bin together still too small for the window,
    and a single other bin to fold them into. That is a 2 x 2 table (e.g. all 400 reference
    photos 200 px wide, a window of 28 all 600 px wide: 1.8 expected in the new bin), where
    folding would leave one bin and hide a complete shift; it gets Fisher's exact test
    instead (the chi-square statistic of the table is still reported, with 1 dof).
    """
    table = np.array([reference, window], dtype=np.float64)
    table = table[:, table.sum(axis=0) > 0]
    n, total = table[1].sum(), table.sum()
    small = n * table.sum(axis=0) / total < min_expected
    if small.any() and not small.all():
        pool = table[:, small].sum(axis=1, keepdims=True)
        table = table[:, ~small]
        if n * pool.sum() / total < min_expected and table.shape[1] == 1:
            return _exact(np.hstack([table, pool]))
        if n * pool.sum() / total < min_expected:
            table[:, [np.argmin(table.sum(axis=0))]] += pool
        else:
            table = np.hstack([table, pool])
    elif small.all():
        return 0.0, 0, 1.0  # fewer than min_expected values in all: nothing to test
    if table.shape[1] < 2:
        return 0.0, 0, 1.0
    result = chi2_contingency(table, correction=False)
    return float(result.statistic), int(result.dof), float(result.pvalue)


def _exact(table: np.ndarray) -> tuple[float, int, float]:
    """A 2 x 2 table too sparse for the chi-square approximation: Fisher's exact p-value."""
    statistic = float(chi2_contingency(table, correction=False).statistic)
    p_value = float(fisher_exact(np.rint(table).astype(np.int64)).pvalue)
    return statistic, 1, p_value


def _bin(
    feature: dict[str, Any], values: Sequence[Any]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Bin labels, reference counts and window counts of one feature."""
    ref = np.asarray(feature["counts"], dtype=np.int64)
    if feature["kind"] == "categorical":
        labels = list(feature["categories"])
        index = {c: i for i, c in enumerate(labels)}
        win = np.zeros(len(labels) + 1, dtype=np.int64)
        for v in values:
            win[index.get(v, len(labels))] += 1
        if win[-1]:  # values the reference never saw get a bin of their own
            return [*labels, OTHER], np.append(ref, 0), win
        return labels, ref, win[:-1]
    edges = feature["edges"]
    labels = [f"{a:g}-{b:g}" for a, b in pairwise(edges)]
    return labels, ref, histogram(np.asarray(values, dtype=np.float64), edges)


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [round(float(c / total), 6) if total else 0.0 for c in counts]


def feature_drift(
    feature: dict[str, Any], values: Sequence[Any], bounds: DriftBounds
) -> dict[str, Any]:
    """PSI, chi-square p-value and flag of one feature's window ``values``."""
    labels, ref, win = _bin(feature, values)
    n = int(win.sum())
    out: dict[str, Any] = {
        "kind": feature["kind"],
        "n": n,
        "psi": None,
        "p_value": None,
        "test": "chi-square, two-sample, on the bins",
        "flag": False,
        "status": INSUFFICIENT,
        "bins": labels,
        "reference": _shares(ref),
        "window": _shares(win),
    }
    if n == 0 or ref.sum() == 0:
        return out
    out["psi"] = round(psi(ref, win), 6)
    out["p_value"] = chi_square(ref, win)[2]
    if n >= bounds.min_window:
        out["flag"] = out["psi"] > bounds.psi and out["p_value"] < bounds.p_value
        out["status"] = "drift" if out["flag"] else "ok"
    return out


def drift_report(
    reference: dict[str, Any], window: dict[str, Sequence[Any]], bounds: DriftBounds
) -> dict[str, Any]:
    """Every reference feature that the window has values for, and an overall status.

    Args:
        reference: ``metadata.json``'s ``reference`` (``training.reference_stats``).
        window: feature name -> recent values (categories or numbers).
        bounds: PSI bound, p-value bound, minimum window size.

    Returns:
        ``{"status": "drift" | "ok" | "insufficient data", "features": {name: ...}}``.
    """
    features = {
        name: feature_drift(spec, window[name], bounds)
        for name, spec in reference["features"].items()
        if name in window
    }
    return {"status": overall_status(features), "features": features}


def overall_status(features: dict[str, dict[str, Any]]) -> str:
    """``drift`` when a feature drifted, else ``ok`` when one was judged, else insufficient
    data (features without a baseline are not judged)."""
    statuses = {f["status"] for f in features.values()}
    return "drift" if "drift" in statuses else "ok" if "ok" in statuses else INSUFFICIENT


def capture_baseline(window: Mapping[str, Sequence[Any]], source: str) -> dict[str, Any]:
    """The capture features of live traffic as histograms in the reference's format, so
    :func:`feature_drift` compares later windows with them.

    Args:
        window: at least the :data:`CAPTURE_FEATURES`, one value per prediction.
        source: where the values come from, kept with each histogram.
    """
    numeric = {"image_width": SIZE_EDGES, "image_height": SIZE_EDGES, "image_aspect": ASPECT_EDGES}
    features: dict[str, Any] = {}
    for name, edges in numeric.items():
        values = np.asarray(window[name], dtype=np.float64)
        features[name] = {
            "kind": "numeric",
            "edges": [float(e) for e in edges],
            "counts": histogram(values, edges).tolist(),
            "source": source,
            "mean": round(float(np.mean(values)), 3) if len(values) else None,
        }
    formats = list(window["image_format"])
    categories = [*IMAGE_FORMATS, *sorted(set(formats) - set(IMAGE_FORMATS))]
    features["image_format"] = {
        "kind": "categorical",
        "categories": categories,
        "counts": [formats.count(c) for c in categories],
        "source": source,
    }
    return features


def _no_baseline(kind: str, values: Sequence[Any], detail: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "n": len(values),
        "psi": None,
        "p_value": None,
        "test": None,
        "flag": False,
        "status": NO_BASELINE,
        "detail": detail,
        "bins": [],
        "reference": [],
        "window": [],
    }


def monitoring_report(
    reference: dict[str, Any] | None,
    baseline: dict[str, Any] | None,
    window: dict[str, Sequence[Any]],
    bounds: DriftBounds,
    no_baseline: str = NO_BASELINE,
) -> dict[str, Any]:
    """Content features against the training reference, capture features against the baseline.

    Args:
        reference: ``metadata.json``'s ``reference``, or None (content features left out).
            Its own image size histograms (of the training copies) are not used.
        baseline: capture features of :func:`capture_baseline`, or None: each capture
            feature of the window is then reported with status ``no baseline`` and
            ``no_baseline`` as its ``detail``, never flagged.
        window: feature name -> recent values.
        bounds: PSI bound, p-value bound, minimum window size.

    Returns:
        ``{"status": ..., "features": {name: {... "group": "content" | "capture"}}}``, the
        status over the judged features (:func:`overall_status`).
    """
    content = {
        name: spec
        for name, spec in ((reference or {}).get("features") or {}).items()
        if name not in CAPTURE_FEATURES
    }
    features = {
        name: {**f, "group": "content"}
        for name, f in drift_report({"features": content}, window, bounds)["features"].items()
    }
    for name in CAPTURE_FEATURES:
        if name not in window:
            continue
        spec = (baseline or {}).get(name)
        if spec is None:
            kind = "categorical" if name == "image_format" else "numeric"
            features[name] = {**_no_baseline(kind, window[name], no_baseline), "group": "capture"}
        else:
            features[name] = {**feature_drift(spec, window[name], bounds), "group": "capture"}
    return {"status": overall_status(features), "features": features}
