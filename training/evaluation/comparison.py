"""The rows the evaluation compares: baselines, the model, its variants and another model.

Every row holds probabilities on validation (where its thresholds are chosen) and on the
evaluated cases; :mod:`training.evaluation.run` scores them all the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from contracts.errors import ConfigError
from contracts.rules import load_rules
from training.evaluation import scoring
from training.evaluation.baselines import DemographicBaseline, MajorityBaseline
from training.evaluation.calibration import apply_temperature, fit_temperature
from training.evaluation.config import EvaluationConfig
from training.evaluation.prediction import Calibrated, Predictor
from training.evaluation.results import Variant
from training.evaluation.sources import ModelSource, load_source
from training.evaluation.thresholds import points_from_metadata
from training.export.wrapper import LOG_FLOOR, ProbabilityModel
from training.tta import TTA


@dataclass
class Rows:
    """The comparison's rows, the ensemble's members ``(model, T)`` and the compared model."""

    variants: list[Variant] = field(default_factory=list)
    members: list[tuple[ModelSource, float]] = field(default_factory=list)
    compared: ModelSource | None = None


def baselines(train: pd.DataFrame, val: pd.DataFrame, cases: pd.DataFrame) -> list[Variant]:
    """The majority class and the no-image (body site, age band, sex) baseline."""
    majority, demographic = MajorityBaseline().fit(train["label"]), DemographicBaseline().fit(train)
    return [
        Variant("majority class", "majority", *(majority.predict_proba(f) for f in (val, cases))),
        Variant(
            "body site + age band + sex, no image",
            "demographic",
            *(demographic.predict_proba(f) for f in (val, cases)),
        ),
    ]


def model_rows(
    source: ModelSource, main: Calibrated, predictor: Predictor, rules_path: str | Path
) -> list[Variant]:
    """The model as given (or as exported), calibrated, and with the body-location rules."""
    stored = points_from_metadata(source.metadata.thresholds)
    if source.kind == "version":
        rows = [
            Variant(
                "version as exported",
                "cnn_raw",
                *main.raw,
                stored,
                decision=source.metadata.decision_rule(),
            )
        ]
    else:
        rows = [Variant("CNN, uncalibrated", "cnn_raw", *main.raw)]
    rows.append(Variant(f"CNN, temperature {main.temperature:.2f}", "cnn", *main.probs))
    rules = load_rules(rules_path)
    sites = [predictor.val["site"].tolist(), predictor.cases["site"].tolist()]
    ruled = (scoring.with_rules(p, s, rules) for p, s in zip(main.probs, sites, strict=True))
    rows.append(Variant("CNN + body-location rules", "rules", *ruled))
    return rows


def tta_row(source: ModelSource, temperature: float, predictor: Predictor) -> Variant:
    """The calibrated model with test-time augmentation (flips, 180°), recalibrated.

    The mean of the views' calibrated probabilities is less confident than each view (measured:
    ECE 0.062 against the plain network's 0.046 for make run's model), so a second temperature,
    fitted on validation like the first, is applied to the mean's logarithm (when calibrating;
    the argmax does not change). Export serves exactly this (``LogProbabilities`` and that
    temperature).
    """
    model = TTA(ProbabilityModel(source.logits, temperature), input_size=source.input_size)
    val, cases = (np.log(np.maximum(x, LOG_FLOOR)) for x in predictor.logits(source, model))
    t = fit_temperature(val, predictor.y_val) if predictor.calibrate else 1.0
    return Variant(
        "CNN + TTA (flips, 180°)",
        "tta",
        apply_temperature(val, t),
        apply_temperature(cases, t),
        temperature=t,
    )


def ensemble_rows(
    source: ModelSource, main: Calibrated, others: list[str], predictor: Predictor, rows: Rows
) -> None:
    """Each other member calibrated on its own, then the mean of all members, into ``rows``."""
    rows.members.append((source, main.temperature))
    member_probs = [main.probs]
    for path in others:
        other = load_source(path)
        if other.input_size != source.input_size:
            raise ConfigError(
                f"ensemble member {path} takes {other.input_size} images and "
                f"{source.path} takes {source.input_size}: members must share the input size"
            )
        calibrated = predictor.calibrated(other)
        rows.members.append((other, calibrated.temperature))
        member_probs.append(calibrated.probs)
        key = f"member:{len(rows.members) - 1}"
        rows.variants.append(Variant(f"member {other.name}", key, *calibrated.probs))
    mean = (np.mean([p[i] for p in member_probs], axis=0) for i in (0, 1))
    rows.variants.append(Variant(f"ensemble of {len(rows.members)}", "ensemble", *mean))


def build_rows(
    source: ModelSource,
    main: Calibrated,
    train: pd.DataFrame,
    predictor: Predictor,
    config: EvaluationConfig,
) -> Rows:
    """Every row ``config`` asks for, in the report's order.

    Args:
        source: the evaluated model.
        main: its probabilities before and after calibration.
        train: the training rows (for the baselines).
        predictor: predicts validation and the evaluated cases.
        config: which variants (``tta``, ``ensemble``, ``compare``) and the rules file.
    """
    rows = Rows(baselines(train, predictor.val, predictor.cases))
    rows.variants += model_rows(source, main, predictor, config.rules_path)
    if config.tta:
        rows.variants.append(tta_row(source, main.temperature, predictor))
    if config.ensemble:
        ensemble_rows(source, main, list(config.ensemble), predictor, rows)
    if config.compare:
        rows.compared = compared = load_source(config.compare)
        val, test = predictor.probabilities(compared)
        stored = points_from_metadata(compared.metadata.thresholds)
        # A version names what its metadata.json says (its argmax when it says nothing).
        named = compared.metadata.decision_rule() if compared.kind == "version" else None
        rows.variants.append(
            Variant(f"compared: {compared.name}", "compare", val, test, stored, decision=named)
        )
    return rows
