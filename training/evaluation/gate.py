"""The promotion gate applied to two evaluated rows, paired over the same lesions.

:mod:`training.evaluation.promotion` decides on numbers; this gives it the numbers: both
models scored with their own outputs and thresholds, and paired lesion-bootstrap intervals.
"""

from __future__ import annotations

from training.evaluation import scoring
from training.evaluation.config import EvaluationConfig
from training.evaluation.promotion import DEFAULT_TOLERANCES, GateDecision, check_promotion
from training.evaluation.results import Variant


def judge(
    candidate: Variant,
    served: Variant,
    scores: dict[str, scoring.Score],
    cases: scoring.Cases,
    config: EvaluationConfig,
) -> GateDecision:
    """The promotion gate on both models' own outputs and thresholds, paired by lesion.

    Args:
        candidate: the row of the model that would be promoted.
        served: the row of the model it would replace.
        scores: every row's score, by key.
        cases: the evaluated cases.
        config: ``n_resamples``, ``seed``, ``tolerances`` and ``force``.
    """
    diffs = {}
    if config.n_resamples:
        diffs = scoring.paired_differences(
            (served.test, served.points, served.decision),
            (candidate.test, candidate.points, candidate.decision),
            cases,
            config.n_resamples,
            config.seed,
        )
    return check_promotion(
        scores[candidate.key].metrics(),
        scores[served.key].metrics(),
        {k: (d.low, d.high) for k, d in diffs.items()},
        config.tolerances or DEFAULT_TOLERANCES,
        config.force,
    )
