"""Which class a version names: the decision rule, defined ONCE for evaluation, export and the
gateway (docs: DESIGN.md "Contracts").

The served probabilities are calibrated to the training data's class mix, where 7 in 10 lesions
are moles. Their argmax therefore names the frequent class whenever a lesion is ambiguous, which
is what plain accuracy rewards and what balanced accuracy (the mean of the per-class
sensitivities, the figure a clinician reads) punishes. The balanced rule divides each
probability by its class's training prior raised to ``tau`` before taking the largest:

    named class = argmax_c  log p_c - tau * log prior_c

(logit adjustment, Menon et al. 2021, "Long-tail learning via logit adjustment"). ``tau = 0`` is
the argmax; ``tau = 1`` is the argmax under equal priors. ``tau`` is chosen on the VALIDATION
split, the value with the highest balanced accuracy (:func:`choose`), and stored in the
version's ``metadata.json`` under ``decision`` (:meth:`DecisionRule.to_metadata`). The
probabilities shown and the referral thresholds are unchanged: the rule only says which class
is named first.

A version without ``decision`` (exported before it existed) names its argmax, as it always did.
Numpy and contracts.metrics: the gateway imports this without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from contracts.labels import CLASSES, NUM_CLASSES
from contracts.metrics import confusion_matrix, metrics_from_confusion

ARGMAX = "argmax"
BALANCED = "balanced"
RULES: tuple[str, ...] = (ARGMAX, BALANCED)
# The values of tau tried on validation: 0 (argmax) to 1.5 (past the equal-prior rule).
TAU_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(31))


class DecisionError(ValueError):
    """A ``decision`` entry of ``metadata.json`` this code cannot apply."""


@dataclass(frozen=True)
class DecisionRule:
    """``named class = argmax(log p + offsets)``, ``offsets = -tau * log(priors)``.

    Args:
        tau: the strength of the prior correction; 0 is the plain argmax.
        priors: the training split's class frequencies, in :data:`CLASSES` order (each > 0).
        val_balanced_accuracy: the balanced accuracy of this rule on validation, if known.
        val_balanced_accuracy_argmax: the plain argmax's, on the same cases.
    """

    tau: float = 0.0
    priors: tuple[float, ...] = (1.0 / NUM_CLASSES,) * NUM_CLASSES
    val_balanced_accuracy: float | None = None
    val_balanced_accuracy_argmax: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tau) and self.tau >= 0):
            raise DecisionError(f"decision tau must be a finite number >= 0, got {self.tau!r}")
        if len(self.priors) != NUM_CLASSES or not all(
            math.isfinite(p) and p > 0 for p in self.priors
        ):
            raise DecisionError(
                f"decision priors must be {NUM_CLASSES} positive numbers in the order "
                f"{list(CLASSES)}, got {list(self.priors)!r}"
            )

    @property
    def rule(self) -> str:
        return ARGMAX if self.tau == 0 else BALANCED

    @property
    def offsets(self) -> np.ndarray:
        """What is added to each class's log-probability before the argmax, ``[7]``."""
        return -self.tau * np.log(np.asarray(self.priors, dtype=np.float64))

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """The named class index of each row of ``probs [N, 7]`` (or of one row ``[7]``).

        A probability of 0 (a class the body-location rules removed) is never named.
        """
        probs = np.asarray(probs, dtype=np.float64)
        with np.errstate(divide="ignore"):
            scores = np.log(probs) + self.offsets
        out: np.ndarray = scores.argmax(axis=-1)
        return out

    def name(self, probs: Mapping[str, float]) -> str:
        """The named class code of one case given ``{class: probability}`` (missing = 0)."""
        row = np.array([float(probs.get(c, 0.0)) for c in CLASSES])
        return CLASSES[int(self.decide(row))]

    def to_metadata(self) -> dict[str, Any]:
        """The ``decision`` entry of ``metadata.json``."""
        return {
            "rule": self.rule,
            "tau": self.tau,
            "class_priors": dict(zip(CLASSES, self.priors, strict=True)),
            "chosen_on": "validation: the tau with the highest balanced accuracy",
            "val_balanced_accuracy": self.val_balanced_accuracy,
            "val_balanced_accuracy_argmax": self.val_balanced_accuracy_argmax,
        }

    @classmethod
    def from_metadata(cls, stored: Any, source: str = "metadata.json") -> DecisionRule:
        """The rule a version brought; the plain argmax when it brought none.

        Raises:
            DecisionError: an entry that is not an object, an unknown rule, or a tau or priors
                that cannot be applied (naming ``source``).
        """
        if stored is None:
            return ARGMAX_RULE
        if not isinstance(stored, dict):
            raise DecisionError(f"{source}: decision must be an object, got {stored!r}")
        rule = stored.get("rule", BALANCED)
        if rule not in RULES:
            raise DecisionError(
                f"{source}: unknown decision rule {rule!r}; this code knows {RULES}"
            )
        if rule == ARGMAX:
            return ARGMAX_RULE
        priors = stored.get("class_priors")
        tau = stored.get("tau")
        if (
            not isinstance(priors, dict)
            or set(priors) != set(CLASSES)
            or not isinstance(tau, int | float)
            or isinstance(tau, bool)
        ):
            raise DecisionError(
                f"{source}: a balanced decision needs a number tau and class_priors for each of "
                f"{list(CLASSES)}, got tau={tau!r}, class_priors={priors!r}"
            )
        try:
            values = tuple(float(priors[c]) for c in CLASSES)
            return cls(
                float(tau),
                values,
                _opt(stored.get("val_balanced_accuracy")),
                _opt(stored.get("val_balanced_accuracy_argmax")),
            )
        except (TypeError, ValueError) as exc:
            raise DecisionError(f"{source}: {exc}") from exc


ARGMAX_RULE = DecisionRule()


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def priors_from_labels(labels: Sequence[str] | np.ndarray) -> tuple[float, ...]:
    """Class frequencies of training labels (codes or indices), add-one smoothed so none is 0."""
    values = np.asarray(labels)
    if values.dtype.kind in "iu":
        idx = values.astype(int)
    else:
        lookup = {c: i for i, c in enumerate(CLASSES)}
        idx = np.array([lookup[str(v)] for v in values], dtype=int)
    counts = np.bincount(idx, minlength=NUM_CLASSES).astype(np.float64) + 1.0
    return tuple(float(v) for v in counts / counts.sum())


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean sensitivity over the classes present in ``labels`` (``contracts.metrics``)."""
    cm = confusion_matrix(np.asarray(labels), np.asarray(predicted), NUM_CLASSES)
    return metrics_from_confusion(cm)["balanced_accuracy"]


def choose(
    probs: np.ndarray,
    labels: np.ndarray,
    priors: Sequence[float],
    grid: Sequence[float] = TAU_GRID,
) -> DecisionRule:
    """The rule with the highest balanced accuracy on these (validation) cases.

    Ties go to the smaller tau (the closer to the calibrated argmax). ``labels`` are class
    indices.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("no cases to choose a decision rule on")
    priors = tuple(float(p) for p in priors)
    argmax_ba = balanced_accuracy(labels, probs.argmax(axis=1))
    best_tau, best_ba = 0.0, argmax_ba
    for tau in grid:
        ba = balanced_accuracy(labels, DecisionRule(float(tau), priors).decide(probs))
        if ba > best_ba + 1e-12:
            best_tau, best_ba = float(tau), ba
    return DecisionRule(best_tau, priors, best_ba, argmax_ba)
