"""The decision rule (contracts/decision.py): which class a version names, chosen on validation,
stored in metadata.json, applied the same way by evaluation, the gateway and batch predict."""

from __future__ import annotations

import math

import numpy as np
import pytest

from contracts import decision
from contracts.decision import ARGMAX_RULE, DecisionError, DecisionRule
from contracts.labels import CLASS_INDEX, CLASSES, NUM_CLASSES
from contracts.metadata import MetadataError, VersionMetadata

NV, MEL, BKL = CLASS_INDEX["nv"], CLASS_INDEX["mel"], CLASS_INDEX["bkl"]


def _two_class_case() -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """90 moles at P(nv)=0.60, 10 melanomas at P(nv)=0.55: the argmax names every one a mole
    (balanced accuracy 0.5). Priors: nv 0.9, mel 0.1 (the rest tiny). The balanced rule names
    the melanomas and only them for tau in (log(0.55/0.45), log(0.6/0.4)) / log 9 =
    (0.0913, 0.1845): on the grid, 0.10 and 0.15; the smaller wins."""
    probs = np.full((100, NUM_CLASSES), 1e-6)
    probs[:90, NV], probs[:90, MEL] = 0.60, 0.40
    probs[90:, NV], probs[90:, MEL] = 0.55, 0.45
    labels = np.array([NV] * 90 + [MEL] * 10)
    priors = np.full(NUM_CLASSES, 1e-3)
    priors[NV], priors[MEL] = 0.9, 0.1
    return probs, labels, tuple(priors / priors.sum())


def test_choose_finds_the_tau_that_names_the_rare_class_and_only_it() -> None:
    probs, labels, priors = _two_class_case()
    rule = decision.choose(probs, labels, priors)
    assert rule.tau == pytest.approx(0.10)
    assert rule.rule == "balanced"
    assert rule.val_balanced_accuracy_argmax == pytest.approx(0.5)
    assert rule.val_balanced_accuracy == pytest.approx(1.0)
    named = rule.decide(probs)
    assert (named[:90] == NV).all() and (named[90:] == MEL).all()


def test_choose_keeps_the_argmax_when_nothing_beats_it() -> None:
    probs = np.eye(NUM_CLASSES)[np.arange(70) % NUM_CLASSES] * 0.9 + 0.1 / NUM_CLASSES
    labels = np.arange(70) % NUM_CLASSES
    rule = decision.choose(probs, labels, decision.priors_from_labels(labels))
    assert rule.tau == 0.0 and rule.rule == "argmax"
    assert rule.val_balanced_accuracy == rule.val_balanced_accuracy_argmax == pytest.approx(1.0)


def test_a_class_with_probability_zero_is_never_named() -> None:
    # A body-location rule removed mel (probability 0); its huge prior correction cannot bring
    # it back.
    priors = np.full(NUM_CLASSES, 0.001)
    priors[NV] = 0.994
    rule = DecisionRule(1.5, tuple(priors))
    probs = np.zeros(NUM_CLASSES)
    probs[NV], probs[BKL] = 0.999, 0.001
    assert CLASSES[int(rule.decide(probs))] == "bkl"
    assert rule.name({"nv": 0.999, "bkl": 0.001, "mel": 0.0}) == "bkl"
    assert ARGMAX_RULE.name({"nv": 0.999, "bkl": 0.001}) == "nv"


def test_the_rule_is_the_formula_on_random_probabilities() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(NUM_CLASSES), size=500)
    priors = tuple(rng.dirichlet(np.ones(NUM_CLASSES)) + 1e-3)
    rule = DecisionRule(0.7, priors)
    expected = np.argmax(np.log(probs) - 0.7 * np.log(priors), axis=1)
    assert (rule.decide(probs) == expected).all()
    assert (ARGMAX_RULE.decide(probs) == probs.argmax(axis=1)).all()


def test_priors_are_smoothed_frequencies_in_class_order() -> None:
    priors = decision.priors_from_labels(["nv", "nv", "mel", "nv"])
    assert sum(priors) == pytest.approx(1.0)
    assert priors[NV] == pytest.approx(4 / 11) and priors[MEL] == pytest.approx(2 / 11)
    assert priors[BKL] == pytest.approx(1 / 11)  # unseen, yet not 0
    assert decision.priors_from_labels(np.array([NV, NV, MEL, NV])) == priors


def test_metadata_round_trip_and_old_versions_name_their_argmax() -> None:
    _, _, priors = _two_class_case()
    rule = DecisionRule(0.35, priors, 0.71, 0.68)
    meta = VersionMetadata(name="skin_lesion", input_size=(112, 150), decision=rule.to_metadata())
    back = VersionMetadata.from_dict(meta.to_dict())
    assert back.decision_rule() == rule
    assert back.to_dict()["decision"]["class_priors"]["nv"] == pytest.approx(priors[NV])
    old = VersionMetadata(name="skin_lesion", input_size=(112, 150))
    assert "decision" not in old.to_dict()  # an argmax version's metadata.json is unchanged
    assert VersionMetadata.from_dict(old.to_dict()).decision_rule() == ARGMAX_RULE


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("argmax please", "must be an object"),
        ({"rule": "cost"}, "unknown decision rule 'cost'"),
        ({"rule": "balanced", "tau": 0.5}, "class_priors"),
        ({"rule": "balanced", "tau": "0.5", "class_priors": {c: 0.1 for c in CLASSES}}, "tau"),
        ({"rule": "balanced", "tau": 0.5, "class_priors": {"nv": 1.0}}, "class_priors"),
        ({"rule": "balanced", "tau": -1, "class_priors": {c: 0.1 for c in CLASSES}}, ">= 0"),
        ({"rule": "balanced", "tau": 0.5, "class_priors": {c: 0.0 for c in CLASSES}}, "positive"),
    ],
)
def test_an_entry_that_cannot_be_applied_is_refused_by_name(entry: object, words: str) -> None:
    raw = VersionMetadata(name="m", input_size=(8, 8)).to_dict() | {"decision": entry}
    with pytest.raises(MetadataError, match=r"metadata\.json") as info:
        VersionMetadata.from_dict(raw)
    assert words in str(info.value)
    with pytest.raises(DecisionError):
        DecisionRule.from_metadata(entry)


def test_tau_must_be_finite() -> None:
    with pytest.raises(DecisionError):
        DecisionRule(math.inf)
