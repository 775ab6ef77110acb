"""Do the body-location rules help? Compare the model's argmax with and without them.

The rules can only remove classes, so besides balanced accuracy and per-class sensitivity
this counts the harm a rule can do: images whose TRUE class was excluded.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from contracts.labels import CLASS_INDEX, CLASSES
from contracts.rules import Rules, apply_rules


def _sensitivities(labels: np.ndarray, preds: np.ndarray) -> dict[str, float | None]:
    """Recall per class; ``None`` for a class absent from ``labels``."""
    out: dict[str, float | None] = {}
    for i, cls in enumerate(CLASSES):
        mask = labels == i
        out[cls] = float((preds[mask] == i).mean()) if mask.any() else None
    return out


def _summary(labels: np.ndarray, preds: np.ndarray) -> dict:
    sens = _sensitivities(labels, preds)
    present = [s for s in sens.values() if s is not None]
    return {
        "balanced_accuracy": float(np.mean(present)),
        "accuracy": float((preds == labels).mean()),
        "sensitivity": sens,
    }


def rules_effect(probs: np.ndarray, labels: np.ndarray, sites: list[str], rules: Rules) -> dict:
    """Balanced accuracy and per-class sensitivity at argmax, without and with the rules.

    Args:
        probs: ``[N, 7]`` model probabilities in ``CLASSES`` order.
        labels: ``[N]`` true class indices.
        sites: ``N`` body sites (``BODY_SITES`` values).
        rules: from :func:`contracts.rules.load_rules`.

    Returns:
        ``{"n", "without", "with", "delta_balanced_accuracy", "changed",
        "true_class_excluded", "exclusions_by_rule"}``; ``without``/``with`` hold
        ``balanced_accuracy``, ``accuracy`` and ``sensitivity`` (class -> recall or None).
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or probs.shape[1] != len(CLASSES) or len(probs) != len(labels):
        raise ValueError(f"expected probs [N, {len(CLASSES)}] and N labels, got {probs.shape}")
    if len(sites) != len(labels) or len(labels) == 0:
        raise ValueError(f"expected {len(labels)} > 0 sites, got {len(sites)}")
    before = probs.argmax(axis=1)
    after = np.empty_like(before)
    harmed = 0
    by_rule: Counter[str] = Counter()
    for i, (p, site) in enumerate(zip(probs, sites, strict=True)):
        result = apply_rules(p, site, rules)
        after[i] = CLASS_INDEX[result.ranking[0][0]]
        by_rule.update(e.rule_id for e in result.excluded)
        harmed += any(CLASS_INDEX[e.cls] == labels[i] for e in result.excluded)
    without, with_rules = _summary(labels, before), _summary(labels, after)
    return {
        "n": len(labels),
        "without": without,
        "with": with_rules,
        "delta_balanced_accuracy": with_rules["balanced_accuracy"] - without["balanced_accuracy"],
        "changed": int((before != after).sum()),
        "true_class_excluded": int(harmed),
        "exclusions_by_rule": dict(by_rule),
    }
