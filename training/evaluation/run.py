"""One evaluation: the evidence behind a model and the decisions it ships with (writes nothing).

On one split (or a CSV / HAM10000-layout folder of its own) it scores, side by side, the
majority class, a no-image heuristic (body site, age band, sex), the CNN before and after
temperature scaling, the CNN with the body-location rules, and on request TTA, an ensemble
and another model. The referral thresholds on P(mel) and P(akiec+bcc+mel) are chosen on the
VALIDATION split to reach the target sensitivity, and reported where they land on the
evaluated cases. Intervals resample lesions.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from contracts import decision
from training import data as data_mod
from training.evaluation import scoring
from training.evaluation import thresholds as th
from training.evaluation.comparison import build_rows
from training.evaluation.config import EvaluationConfig
from training.evaluation.gate import judge
from training.evaluation.prediction import Predictor
from training.evaluation.promotion import GateDecision
from training.evaluation.results import Evaluation, Variant
from training.evaluation.sources import ModelSource, load_cases, load_source
from training.recorded_split import SplitData, rebuild_split

log = logging.getLogger(__name__)
# Rows the main model is not compared against (itself, and a baseline that is always worse).
NOT_COMPARED = ("cnn", "cnn_raw", "majority")


def _notes(source: ModelSource, recorded: SplitData, config: EvaluationConfig) -> list[str]:
    """Caveats the report states before its figures."""
    notes = []
    if recorded.synthetic:
        notes.append("SYNTHETIC data: these figures say nothing about real lesions.")
    trained_on = source.metadata.dataset_version
    if trained_on and trained_on != recorded.dataset_version:
        notes.append(
            f"The data (version {recorded.dataset_version[:16]}) are not those the model was "
            f"trained on ({str(trained_on)[:16]}): the evaluated split may hold training images."
        )
    if config.limit_per_class:
        notes.append(
            f"At most {config.limit_per_class} images per class: rough figures, for a quick "
            "look only."
        )
    if not config.data and config.split == "val":
        notes.append(
            "Thresholds and temperature were fitted on the split they are scored on: the "
            "operating point's sensitivity and the calibration are optimistic."
        )
    if not config.data and config.split == "train":
        notes.append("The training split: the model has seen these images.")
    return notes


def _calibration_note(ev: Evaluation, config: EvaluationConfig) -> str | None:
    """A warning when temperature scaling made the evaluated cases' calibration worse."""
    before, after = ev.scores["cnn_raw"].ece, ev.scores["cnn"].ece
    if not after > before:
        return None
    # T minimises the validation NLL, not the ECE; a shifted case mix can undo it.
    where = "these cases" if config.data else config.split
    return (
        f"Temperature scaling (T={ev.temperature:.2f}, fitted on validation) RAISED the ECE on "
        f"{where} ({before:.3f} -> {after:.3f}): export with --no-calibrate unless the "
        "reliability diagram says otherwise."
    )


def _cases(recorded: SplitData, config: EvaluationConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(validation, evaluated cases)``, each capped at ``limit_per_class`` when set."""
    val = recorded.splits["val"]
    cases = load_cases(config.data) if config.data else recorded.splits[config.split]
    if config.limit_per_class:
        val = data_mod.limit_per_class(val, config.limit_per_class, config.seed)
        cases = data_mod.limit_per_class(cases, config.limit_per_class, config.seed)
    return val, cases


def _settings(
    recorded: SplitData, val: pd.DataFrame, cases: pd.DataFrame, config: EvaluationConfig
) -> dict[str, Any]:
    return {
        **recorded.settings,
        "dataset_version": recorded.dataset_version,
        "target_sensitivity": config.target_sensitivity,
        "threshold_confidence": config.threshold_confidence,
        "n_resamples": config.n_resamples,
        "bootstrap_seed": config.seed,
        "limit_per_class": config.limit_per_class,
        "rules": str(config.rules_path),
        "val_images": len(val),
        "evaluated_images": len(cases),
        "evaluated_lesions": int(cases["group"].nunique()),
        "train_distribution": distribution(recorded.splits["train"]),
    }


def distribution(frame: pd.DataFrame) -> dict[str, Any]:
    """Images of a split by class, sex, age band and body site (for the model card)."""

    def counts(values: Any) -> dict[str, int]:
        return {str(k): int(v) for k, v in pd.Series(values).value_counts().items()}

    return {
        "images": len(frame),
        "label": counts(frame["label"]),
        "sex": counts(frame["sex"].fillna("unknown")) if "sex" in frame else {},
        "age band": counts([scoring.age_band(a) for a in frame["age"]]) if "age" in frame else {},
        "site": counts(frame["site"].fillna("unknown")) if "site" in frame else {},
    }


def _score(
    rows: list[Variant],
    y_val: Any,
    priors: tuple[float, ...],
    cases: scoring.Cases,
    config: EvaluationConfig,
) -> dict[str, scoring.Score]:
    """Score every row; rows without their own thresholds or decision rule get them chosen on
    validation (the rule from the training split's class ``priors``)."""
    scores = {}
    for v in rows:
        if v.points is None:
            v.points = th.operating_points(
                v.val, y_val, config.target_sensitivity, config.threshold_confidence
            )
        if v.decision is None:
            v.decision = (
                decision.choose(v.val, y_val, priors)
                if config.balanced_decision
                else decision.ARGMAX_RULE
            )
        scores[v.key] = scoring.score(
            v.name, v.test, cases, v.points, config.n_resamples, config.seed, v.decision
        )
    return scores


def evaluate(model: str | Path, config: EvaluationConfig | None = None) -> Evaluation:
    """Evaluate ``model`` (a ``.ckpt`` or an exported version folder); writes nothing.

    Args:
        model: checkpoint file or ``model_repository/<name>/<version>``.
        config: what to evaluate and how (default: the test split, every default).
    """
    config = config or EvaluationConfig()
    source = load_source(model)
    overrides = dict(config.split_overrides or {})
    recorded = rebuild_split(source.datamodule, source.input_size, config.data_dir, overrides)
    val, cases = _cases(recorded, config)
    predictor = Predictor(val, cases, config.calibrate, config.batch_size)
    log.info("predicting %d validation and %d evaluated images", len(val), len(cases))
    main = predictor.calibrated(source)
    rows = build_rows(source, main, recorded.splits["train"], predictor, config)
    variants = {v.key: v for v in rows.variants}
    case_set = scoring.Cases(cases)
    priors = decision.priors_from_labels(recorded.splits["train"]["label"])
    scores = _score(rows.variants, predictor.y_val, priors, case_set, config)
    cnn = variants["cnn"]
    differences = {
        v.key: scoring.paired_differences(
            (cnn.test, cnn.points, cnn.decision),
            (v.test, v.points, v.decision),
            case_set,
            config.n_resamples,
            config.seed,
        )
        for v in rows.variants
        if config.n_resamples and v.key not in NOT_COMPARED
    }
    gate = None
    if rows.compared is not None:
        # The candidate as it would ship: a checkpoint is exported calibrated, a version as is.
        candidate = variants["cnn" if source.kind == "checkpoint" else "cnn_raw"]
        gate = judge(candidate, variants["compare"], scores, case_set, config)
    ev = Evaluation(
        name=config.name or source.name,
        source=source,
        split=str(config.data) if config.data else config.split,
        cases=case_set,
        val_cases=scoring.Cases(val),
        settings=_settings(recorded, val, cases, config),
        temperature=main.temperature,
        variants=variants,
        scores=scores,
        differences=differences,
        notes=_notes(source, recorded, config),
        gate=gate,
        members=rows.members,
    )
    if config.calibrate and (note := _calibration_note(ev, config)):
        ev.notes.append(note)
    return ev


def promotion_check(
    candidate: str | Path, served: str | Path, config: EvaluationConfig | None = None
) -> GateDecision:
    """Evaluate ``candidate`` against ``served`` on the candidate's recorded test split.

    For ``python -m serving.versions promote``: both versions are scored as they would serve
    (their own temperature and thresholds), paired over the same lesions.

    Args:
        candidate: the version (or checkpoint) that would be promoted.
        served: the version it would replace.
        config: the evaluation's settings (``data_dir``, ``n_resamples``, ``force``,
            ``tolerances``, ...); ``compare`` and ``calibrate`` are set here.
    """
    config = dataclasses.replace(config or EvaluationConfig(), compare=served, calibrate=False)
    gate = evaluate(candidate, config).gate
    assert gate is not None  # compare is set, so the gate ran
    return gate
