"""A model's outputs on validation and on the evaluated cases, before and after calibration."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch.nn as nn

from training.evaluation.baselines import label_indices
from training.evaluation.calibration import apply_temperature, fit_temperature
from training.evaluation.sources import ModelSource
from training.inference import predict


@dataclass
class Calibrated:
    """Probabilities of one model on ``[validation, evaluated cases]``.

    Attributes:
        temperature: fitted on validation (1.0 when not calibrating).
        raw: at temperature 1.
        probs: at ``temperature``.
    """

    temperature: float
    raw: list[np.ndarray]
    probs: list[np.ndarray]


class Predictor:
    """Predicts validation and evaluated cases for one model, with a fitted temperature.

    Args:
        val: the validation rows (temperature and thresholds are fitted on them).
        cases: the evaluated rows.
        calibrate: fit a temperature; otherwise use 1.
        batch_size: images per forward pass.
    """

    def __init__(
        self, val: pd.DataFrame, cases: pd.DataFrame, calibrate: bool, batch_size: int
    ) -> None:
        self.val, self.cases = val, cases
        self.calibrate, self.batch_size = calibrate, batch_size
        self.y_val = label_indices(val["label"])

    def logits(self, source: ModelSource, model: nn.Module | None = None) -> list[np.ndarray]:
        """``[val, cases]`` outputs of ``model`` (default: the source's logits)."""
        model = source.logits if model is None else model
        return [
            predict(model, f, source.input_size, self.batch_size) for f in (self.val, self.cases)
        ]

    def probabilities(self, source: ModelSource) -> list[np.ndarray]:
        """``[val, cases]`` probabilities at temperature 1."""
        return [apply_temperature(x, 1.0) for x in self.logits(source)]

    def calibrated(self, source: ModelSource) -> Calibrated:
        """The source's probabilities before and after temperature scaling."""
        logits = self.logits(source)
        t = fit_temperature(logits[0], self.y_val) if self.calibrate else 1.0
        return Calibrated(
            t,
            [apply_temperature(x, 1.0) for x in logits],
            [apply_temperature(x, t) for x in logits],
        )
