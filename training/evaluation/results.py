"""What an evaluation produces: the compared rows and everything the report shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contracts.decision import DecisionRule
from training.evaluation import scoring
from training.evaluation import thresholds as th
from training.evaluation.bootstrap import Interval
from training.evaluation.promotion import GateDecision
from training.evaluation.sources import ModelSource


@dataclass
class Variant:
    """One row of the comparison: probabilities on validation and on the evaluated cases.

    ``key``: majority, demographic, cnn_raw (uncalibrated / version as exported), cnn (the
    model as it would ship: calibrated), rules, tta, member:<i>, ensemble, compare.
    ``points``: the referral thresholds; chosen on ``val`` unless the model brought its own.
    ``decision``: which class the row names (``contracts.decision``); chosen on ``val`` unless
    the model brought its own (a version names what its ``metadata.json`` says).
    """

    name: str
    key: str
    val: np.ndarray
    test: np.ndarray
    points: dict[str, th.OperatingPoint] | None = None
    decision: DecisionRule | None = None
    # A temperature applied to this row's own log-probabilities (TTA: after averaging the views).
    temperature: float = 1.0


@dataclass
class Evaluation:
    """Everything the report shows; built by :func:`training.evaluation.run.evaluate`."""

    name: str
    source: ModelSource
    split: str
    cases: scoring.Cases
    val_cases: scoring.Cases
    settings: dict[str, Any]
    temperature: float
    variants: dict[str, Variant]
    scores: dict[str, scoring.Score]
    differences: dict[str, dict[str, Interval]]  # variant key -> metric -> (variant - cnn)
    notes: list[str] = field(default_factory=list)
    gate: GateDecision | None = None
    members: list[tuple[ModelSource, float]] = field(default_factory=list)  # (model, T)

    @property
    def labels(self) -> np.ndarray:
        return self.cases.labels
