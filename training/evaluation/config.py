"""What one evaluation does: its settings, with the defaults of ``python -m training evaluate``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.errors import ConfigError
from training.evaluation.bootstrap import N_RESAMPLES
from training.evaluation.thresholds import DEFAULT_CONFIDENCE

RULES_PATH = Path(__file__).resolve().parents[2] / "configs" / "body_location_rules.yaml"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class EvaluationConfig:
    """Settings of :func:`training.evaluation.run.evaluate`.

    Args:
        split: ``train``, ``val`` or ``test`` of the recorded lesion-grouped split.
        data: a CSV or HAM10000-layout folder to evaluate instead of ``split`` (validation,
            for thresholds and temperature, still comes from the recorded split).
        data_dir: the recorded split's data (default: the recorded folder, else HAM10000_DIR).
        split_overrides: data-module settings instead of the recorded ones (``seed``, ...).
        name: report name (default: the run's or version's name).
        target_sensitivity: the sensitivity the referral thresholds must reach.
        threshold_confidence: the one-sided confidence with which they reach it (the lower
            Clopper-Pearson bound of the validation sensitivity); None: reach it on the
            validation cases only.
        n_resamples: bootstrap resamples of lesions; 0 for no intervals.
        seed: bootstrap seed.
        calibrate: fit a temperature on validation (for a version: on top of its own).
        tta: also score test-time augmentation (flips and 180°).
        ensemble: more models; the ensemble is the model plus these, probabilities averaged.
        compare: a model to compare with on the same cases, e.g. the served version; the
            promotion gate then judges the evaluated model as the candidate.
        rules_path: body-location rules for the "CNN + rules" row.
        limit_per_class: at most this many images per class in validation and the evaluated
            cases (quick looks; rough figures).
        batch_size: images per forward pass.
        tolerances: the promotion gate's tolerances (default ``DEFAULT_TOLERANCES``).
        force: passed to the promotion gate.
        balanced_decision: choose each row's decision rule on validation (the prior-corrected
            argmax with the best validation balanced accuracy, ``contracts.decision``); False:
            every row names its plain argmax (``--decision argmax``).
    """

    split: str = "test"
    data: str | Path | None = None
    data_dir: str | None = None
    split_overrides: Mapping[str, Any] | None = None
    name: str | None = None
    target_sensitivity: float = 0.95
    threshold_confidence: float | None = DEFAULT_CONFIDENCE
    n_resamples: int = N_RESAMPLES
    seed: int = 0
    calibrate: bool = True
    tta: bool = False
    ensemble: Sequence[str | Path] = ()
    compare: str | Path | None = None
    rules_path: str | Path = RULES_PATH
    limit_per_class: int | None = None
    batch_size: int = 64
    tolerances: Mapping[str, float] | None = None
    force: bool = False
    balanced_decision: bool = True

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"split {self.split!r} is unknown: use train, val or test")
