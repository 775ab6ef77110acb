"""Epoch-level lesion metrics from torchmetrics states, synced across DDP processes.

The figures themselves are defined once, in :mod:`contracts.metrics`, from a confusion matrix:
training logs and offline evaluation cannot disagree.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
from torchmetrics.classification import MulticlassAUROC, MulticlassConfusionMatrix

from contracts.labels import CLASSES
from contracts.metrics import macro_mean, metrics_from_confusion


class LesionMetrics(nn.Module):
    """Epoch-level metrics of one stage from torchmetrics states (synced across processes).

    ``update(probs, target)`` per batch; ``compute()`` returns ``(metrics, confusion_matrix)``
    like :func:`compute_metrics`; ``reset()`` after each epoch.
    """

    def __init__(self, classes: Sequence[str] = CLASSES) -> None:
        super().__init__()
        self.classes = tuple(classes)
        n = len(self.classes)
        self.confusion = MulticlassConfusionMatrix(num_classes=n)
        # Exact AUROC (thresholds=None) keeps the scores; a validation set is small enough.
        self.auroc = MulticlassAUROC(num_classes=n, average=None, thresholds=None)

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.confusion.update(probs, target)
        self.auroc.update(probs, target)

    def compute(self) -> tuple[dict[str, float], np.ndarray]:
        cm = self.confusion.compute().cpu().numpy()
        metrics = metrics_from_confusion(cm, self.classes)
        support = cm.sum(axis=1)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No (positive|negative) samples")
            auroc = self.auroc.compute().cpu().numpy().astype(np.float64)
        # torchmetrics scores a class without positives (or negatives) as 0; it is undefined.
        auroc[(support == 0) | (support == cm.sum())] = np.nan
        metrics["auroc_macro"] = macro_mean(auroc)
        return metrics, cm

    def reset(self) -> None:
        self.confusion.reset()
        self.auroc.reset()
