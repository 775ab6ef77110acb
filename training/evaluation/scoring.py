"""Score a model's probabilities on a split: the numbers of the report's tables (pure numpy).

Every variant (baseline, CNN, CNN + rules, TTA, ensemble) is scored the same way: the class
named by its decision rule (``contracts.decision``, chosen on the VALIDATION split) for balanced
accuracy, the plain argmax beside it (``balanced_accuracy_argmax``, and the argmax melanoma
sensitivity), the referral threshold chosen on validation for the operating point,
lesion-level bootstrap intervals.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from contracts.decision import ARGMAX_RULE, DecisionRule
from contracts.errors import DataError
from contracts.labels import CLASS_INDEX, CLASSES, MELANOMA, NUM_CLASSES
from contracts.metrics import (
    auroc_per_class,
    confusion_matrix,
    macro_mean,
    per_class_from_confusion,
)
from contracts.rules import RuleResult, Rules, apply_rules
from training.evaluation import bootstrap as bs
from training.evaluation import thresholds as th
from training.evaluation.baselines import AGE_BANDS, age_band, label_indices
from training.evaluation.calibration import expected_calibration_error

MEL = CLASS_INDEX[MELANOMA]


@dataclass(frozen=True)
class Cases:
    """The cases of one split: labels, lesion ids and the metadata the breakdowns use."""

    frame: pd.DataFrame

    @property
    def labels(self) -> np.ndarray:
        return label_indices(self.frame["label"])

    @property
    def groups(self) -> np.ndarray:
        return self.frame["group"].astype(str).to_numpy()

    def __len__(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class Score:
    """One variant on one split. Intervals are lesion-level bootstrap 95% intervals."""

    name: str
    balanced_accuracy: bs.Interval  # of the class the decision rule names
    balanced_accuracy_argmax: bs.Interval
    sensitivity_mel_argmax: bs.Interval
    sensitivity_mel_op: bs.Interval
    specificity_mel_op: float
    sensitivity_malignant_op: float
    specificity_malignant_op: float
    auroc_macro: float
    ece: float
    points: dict[str, th.OperatingPoint] = field(repr=False)
    decision: DecisionRule = field(default=ARGMAX_RULE, repr=False)
    # balanced_accuracy minus balanced_accuracy_argmax, paired over the same lesion resamples
    # (exactly 0 for the argmax rule): what the decision rule adds on this split.
    rule_gain: bs.Interval = field(default_factory=lambda: bs.Interval(0.0, 0.0, 0.0, 0.95, 0))
    # Specificity at the threshold that reaches the operating point's target sensitivity on
    # THIS split exactly (the ROC read in hindsight; no threshold can be set there ahead of
    # time): against specificity_*_op, what choosing the threshold with confidence costs.
    specificity_mel_hindsight: float = math.nan
    specificity_malignant_hindsight: float = math.nan

    def metrics(self) -> dict[str, float]:
        """Flat point values, e.g. for W&B, ``metrics.json`` and the promotion gate."""
        flat = {
            k: (v.estimate if isinstance(v, bs.Interval) else v)
            for k, v in self.__dict__.items()
            if k not in ("name", "points", "decision")
        }
        flat.update({f"threshold_{k}": p.threshold for k, p in self.points.items()})
        flat["decision_tau"] = self.decision.tau
        return flat


def _weighted_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    points: dict[str, th.OperatingPoint],
    decision: DecisionRule = ARGMAX_RULE,
) -> dict[str, bs.WeightedMetric]:
    pred = probs.argmax(axis=1)
    mel = labels == MEL
    flagged = th.scores(probs, "mel") >= points["mel"].threshold
    return {
        "balanced_accuracy": bs.balanced_accuracy(labels, decision.decide(probs)),
        "balanced_accuracy_argmax": bs.balanced_accuracy(labels, pred),
        "sensitivity_mel_argmax": bs.sensitivity(mel, pred == MEL),
        "sensitivity_mel_op": bs.sensitivity(mel, flagged),
    }


def score(  # noqa: PLR0913 (what the row brought: points and decision, chosen on validation)
    name: str,
    probs: np.ndarray,
    cases: Cases,
    points: dict[str, th.OperatingPoint],
    n_resamples: int = bs.N_RESAMPLES,
    seed: int = 0,
    decision: DecisionRule = ARGMAX_RULE,
) -> Score:
    """Score ``probs [N, 7]`` on ``cases`` with operating ``points`` and the ``decision`` rule
    chosen elsewhere (validation)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels, groups = cases.labels, cases.groups
    weighted = _weighted_metrics(probs, labels, points, decision)
    intervals = {
        k: bs.bootstrap_ci(m, groups, n_resamples, seed) if n_resamples else _no_ci(m, len(labels))
        for k, m in weighted.items()
    }
    rates = {
        t: th.rates(th.scores(probs, t), th.positives(labels, t), points[t].threshold)
        for t in th.TARGETS
    }
    ruled, argmax = weighted["balanced_accuracy"], weighted["balanced_accuracy_argmax"]
    if not n_resamples:
        gain = _no_ci(lambda w: ruled(w) - argmax(w), len(labels))
    else:
        gain = bs.paired_bootstrap(argmax, ruled, groups, n_resamples, seed)
    hindsight = {
        t: _hindsight_specificity(probs, labels, t, points[t].target_sensitivity)
        for t in th.TARGETS
    }
    auroc = auroc_per_class(labels, probs)
    return Score(
        name=name,
        **intervals,
        rule_gain=gain,
        specificity_mel_op=rates["mel"][1],
        sensitivity_malignant_op=rates["malignant"][0],
        specificity_malignant_op=rates["malignant"][1],
        specificity_mel_hindsight=hindsight["mel"],
        specificity_malignant_hindsight=hindsight["malignant"],
        auroc_macro=float(np.nanmean(auroc)) if not np.isnan(auroc).all() else float("nan"),
        ece=expected_calibration_error(probs, labels),
        points=points,
        decision=decision,
    )


def _hindsight_specificity(
    probs: np.ndarray, labels: np.ndarray, target: str, sensitivity: float
) -> float:
    """Specificity of ``target``'s score where these cases' own sensitivity first reaches
    ``sensitivity`` (NaN without positives here)."""
    try:
        exact = th.choose_threshold(
            th.scores(probs, target), th.positives(labels, target), sensitivity, None
        )
    except DataError:
        return math.nan
    return exact.val_specificity


def _no_ci(metric: bs.WeightedMetric, n: int) -> bs.Interval:
    value = bs.point(metric, n)
    return bs.Interval(value, value, value, n_resamples=0)


# What two compared models bring: probabilities on the cases, their operating points and,
# optionally, their decision rule (the argmax without one).
Outputs = (
    tuple[np.ndarray, dict[str, th.OperatingPoint]]
    | tuple[np.ndarray, dict[str, th.OperatingPoint], DecisionRule]
)


def paired_differences(
    base: Outputs,
    other: Outputs,
    cases: Cases,
    n_resamples: int = bs.N_RESAMPLES,
    seed: int = 0,
) -> dict[str, bs.Interval]:
    """``other - base`` per metric, paired over the same lesion resamples.

    Args:
        base: ``(probs [N, 7], operating points)`` of the reference model.
        other: the same of the model compared with it.
        cases: the ``N`` cases both were scored on.
        n_resamples: bootstrap resamples of lesions.
        seed: bootstrap seed.
    """
    labels, groups = cases.labels, cases.groups
    a = _weighted_metrics(np.asarray(base[0], dtype=np.float64), labels, base[1], *base[2:])
    b = _weighted_metrics(np.asarray(other[0], dtype=np.float64), labels, other[1], *other[2:])
    return {k: bs.paired_bootstrap(a[k], b[k], groups, n_resamples, seed) for k in a}


def _ruled(probs: np.ndarray, sites: list[str], rules: Rules) -> list[RuleResult]:
    probs = np.asarray(probs, dtype=np.float64)
    return [apply_rules(p, site, rules) for p, site in zip(probs, sites, strict=True)]


def _ruled_probs(results: list[RuleResult]) -> np.ndarray:
    out = np.zeros((len(results), NUM_CLASSES))
    for i, result in enumerate(results):
        for cls, prob in result.ranking:
            out[i, CLASS_INDEX[cls]] = prob
    return out


def with_rules(probs: np.ndarray, sites: list[str], rules: Rules) -> np.ndarray:
    """Probabilities after the body-location rules (excluded classes get 0, rest renormalised)."""
    return _ruled_probs(_ruled(probs, sites, rules))


def _argmax_summary(labels: np.ndarray, preds: np.ndarray) -> dict[str, Any]:
    """Balanced accuracy, accuracy and recall per class (None where a class is absent)."""
    recall = per_class_from_confusion(confusion_matrix(labels, preds, NUM_CLASSES))["sensitivity"]
    return {
        "balanced_accuracy": macro_mean(recall),
        "accuracy": float((preds == labels).mean()),
        "sensitivity": {
            c: None if np.isnan(r) else float(r) for c, r in zip(CLASSES, recall, strict=True)
        },
    }


def rules_effect(
    probs: np.ndarray, labels: np.ndarray, sites: list[str], rules: Rules
) -> dict[str, Any]:
    """Do the body-location rules help? Decisions at argmax without and with them.

    The rules can only remove classes, so besides balanced accuracy and per-class sensitivity
    this counts the harm a rule can do: images whose TRUE class was excluded.

    Args:
        probs: ``[N, 7]`` model probabilities in ``CLASSES`` order.
        labels: ``[N]`` true class indices.
        sites: ``N`` body sites (``BODY_SITES`` values).
        rules: from :func:`contracts.rules.load_rules`.

    Returns:
        ``{"n", "without", "with", "delta_balanced_accuracy", "changed",
        "true_class_excluded", "exclusions_by_rule"}``; ``without``/``with`` hold
        ``balanced_accuracy``, ``accuracy`` and ``sensitivity`` (class -> recall or None).

    Raises:
        ValueError: shapes that do not match, or no cases.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES or len(probs) != len(labels):
        raise ValueError(f"expected probs [N, {NUM_CLASSES}] and N labels, got {probs.shape}")
    if len(sites) != len(labels) or len(labels) == 0:
        raise ValueError(f"expected {len(labels)} > 0 sites, got {len(sites)}")
    results = _ruled(probs, sites, rules)
    before = probs.argmax(axis=1)
    after = np.array([CLASS_INDEX[r.ranking[0][0]] for r in results], dtype=np.int64)
    by_rule = Counter(e.rule_id for r in results for e in r.excluded)
    harmed = sum(
        any(CLASS_INDEX[e.cls] == y for e in r.excluded)
        for r, y in zip(results, labels, strict=True)
    )
    without, with_rules_ = _argmax_summary(labels, before), _argmax_summary(labels, after)
    return {
        "n": len(labels),
        "without": without,
        "with": with_rules_,
        "delta_balanced_accuracy": with_rules_["balanced_accuracy"] - without["balanced_accuracy"],
        "changed": int((before != after).sum()),
        "true_class_excluded": int(harmed),
        "exclusions_by_rule": dict(by_rule),
    }


def subgroups(
    probs: np.ndarray,
    cases: Cases,
    points: dict[str, th.OperatingPoint],
    min_cases: int = 1,
    decision: DecisionRule = ARGMAX_RULE,
) -> pd.DataFrame:
    """Metrics by body site, age band and sex: where the model is weaker than its average
    (classes named by ``decision``).

    Columns: ``by, value, n, n_mel, balanced_accuracy, sensitivity_mel_op, specificity_mel_op,
    accuracy``; NaN where a group lacks the cases a metric needs.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = cases.labels
    pred = decision.decide(probs)
    p_mel = th.scores(probs, "mel")
    frame = cases.frame
    keys = {
        "site": frame["site"].fillna("unknown").astype(str).to_numpy(),
        "age band": np.array([age_band(a) for a in frame["age"]]),
        "sex": frame["sex"].fillna("unknown").astype(str).to_numpy(),
    }
    rows = []
    for by, values in keys.items():
        order = AGE_BANDS if by == "age band" else sorted(set(values))
        for value in (v for v in order if v in set(values)):
            m = values == value
            if m.sum() < min_cases:
                continue
            mel = labels[m] == MEL
            sens, spec = th.rates(p_mel[m], mel, points["mel"].threshold)
            rows.append(
                {
                    "by": by,
                    "value": value,
                    "n": int(m.sum()),
                    "n_mel": int(mel.sum()),
                    "balanced_accuracy": bs.point(
                        bs.balanced_accuracy(labels[m], pred[m]), int(m.sum())
                    ),
                    "sensitivity_mel_op": sens,
                    "specificity_mel_op": spec,
                    "accuracy": float((labels[m] == pred[m]).mean()),
                }
            )
    return pd.DataFrame(rows)


def worst_mistakes(
    probs: np.ndarray,
    cases: Cases,
    mel_threshold: float | None = None,
    k: int = 16,
    decision: DecisionRule = ARGMAX_RULE,
) -> dict[str, pd.DataFrame]:
    """The cases to look at first.

    ``confident_wrong``: the named class (by ``decision``) wrong, highest confidence first.
    ``missed_melanoma``: melanomas below ``mel_threshold`` (all melanomas when None), lowest
    P(mel) first.
    Columns: ``row`` (position in the split), ``image_id, path, site, age, sex, label,
    predicted, confidence, p_mel``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = cases.labels
    pred = decision.decide(probs)
    table = cases.frame.reset_index(drop=True)[["image_id", "path", "site", "age", "sex"]].copy()
    table.insert(0, "row", np.arange(len(table)))
    table["label"] = [CLASSES[i] for i in labels]
    table["predicted"] = [CLASSES[i] for i in pred]
    table["confidence"] = probs.max(axis=1)
    table["p_mel"] = probs[:, MEL]
    wrong = table[pred != labels].sort_values("confidence", ascending=False, kind="stable")
    below = probs[:, MEL] < (np.inf if mel_threshold is None else mel_threshold)
    missed = table[(labels == MEL) & below].sort_values("p_mel", kind="stable")
    return {"confident_wrong": wrong.head(k), "missed_melanoma": missed.head(k)}
