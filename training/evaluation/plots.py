"""The report's figures as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from contracts.images import read_image
from contracts.labels import CLASSES
from training.evaluation import thresholds as th
from training.evaluation.calibration import reliability

DPI = 110


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def confusion(cm: np.ndarray, path: Path, title: str = "Confusion matrix") -> Path:
    """Row-normalised (recall per true class) colours, raw counts written in the cells."""
    cm = np.asarray(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = cm / cm.sum(axis=1, keepdims=True)
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    im = ax.imshow(np.nan_to_num(share), vmin=0, vmax=1, cmap="Blues")
    for i in range(len(CLASSES)):
        for j in range(len(CLASSES)):
            light = np.nan_to_num(share[i, j]) > 0.6
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if light else "black",
                fontsize=8,
            )
    ax.set(
        xticks=range(len(CLASSES)),
        yticks=range(len(CLASSES)),
        xticklabels=CLASSES,
        yticklabels=CLASSES,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    fig.colorbar(im, ax=ax, label="share of the true class")
    return _save(fig, path)


def roc(probs: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """One-vs-rest ROC curve per class (classes absent from the split are skipped)."""
    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    for k, cls in enumerate(CLASSES):
        positive = labels == k
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, k])
        ax.plot(fpr, tpr, label=f"{cls} (n={int(positive.sum())})", lw=1.4)
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, one class vs the rest")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def reliability_diagram(
    curves: dict[str, np.ndarray], labels: np.ndarray, path: Path, n_bins: int = 15
) -> Path:
    """Accuracy against confidence per bin for each named set of probabilities."""
    fig, ax = plt.subplots(figsize=(5.4, 5.2))
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
    for name, probs in curves.items():
        bins = reliability(probs, labels, n_bins)
        used = bins.count > 0
        ax.plot(bins.confidence[used], bins.accuracy[used], marker="o", ms=3, label=name)
    ax.set(
        xlabel="confidence (top-class probability)",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"Reliability ({n_bins} bins)",
    )
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def operating_curves(
    probs: np.ndarray, labels: np.ndarray, points: dict[str, th.OperatingPoint], path: Path
) -> Path:
    """Sensitivity against specificity for mel and the malignant group, threshold marked.

    The marker is the threshold chosen on validation, placed where it lands on THIS split.
    """
    fig, axes = plt.subplots(1, len(th.TARGETS), figsize=(10, 4.6))
    for ax, target in zip(axes, th.TARGETS, strict=True):
        score, positive = th.scores(probs, target), th.positives(labels, target)
        if positive.all() or not positive.any():
            ax.set_title(f"{target}: no positive or negative cases")
            continue
        fpr, tpr, _ = roc_curve(positive, score)
        ax.plot(1 - fpr, tpr, lw=1.6)
        point = points[target]
        sens, spec = th.rates(score, positive, point.threshold)
        ax.plot(
            [spec],
            [sens],
            "o",
            color="crimson",
            ms=8,
            label=f"threshold {point.threshold:.3f}: sens {sens:.2f}, spec {spec:.2f}",
        )
        ax.axhline(point.target_sensitivity, ls=":", color="grey")
        name = "melanoma" if target == "mel" else "malignant (akiec+bcc+mel)"
        ax.set(
            xlabel="specificity",
            ylabel="sensitivity",
            xlim=(0, 1.01),
            ylim=(0, 1.01),
            title=f"{name}, n+={int(positive.sum())}",
        )
        ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def thumbnails(table: pd.DataFrame, path: Path, title: str, columns: int = 4) -> Path | None:
    """A grid of the images in ``table`` (columns ``path, label, predicted, confidence,
    p_mel``), each captioned; None when the table is empty."""
    if table.empty:
        return None
    rows = math.ceil(len(table) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, row) in zip(axes.flat, table.iterrows(), strict=False):
        ax.imshow(read_image(str(row["path"])))
        ax.set_title(
            f"{row['image_id']}\ntrue {row['label']}, pred {row['predicted']} "
            f"({row['confidence']:.2f})\nP(mel) {row['p_mel']:.3f}, {row['site']}",
            fontsize=7,
        )
    fig.suptitle(title)
    return _save(fig, path)
