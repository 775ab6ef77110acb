"""The body-location rules' effect on argmax decisions (``training.evaluation.scoring``)."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.rules import Rule, validate_rules
from training.evaluation.scoring import rules_effect, with_rules

FACE_RULES = validate_rules(
    [
        Rule("face-no-df", "face", ("df",), "rare on the face"),
        Rule("face-no-vasc", "face", ("vasc", "df"), "test rule"),
    ]
)
# Four images; the face rules remove df (and vasc, at 0 here). Image 1 (true mel on the face)
# was predicted df: the rule fixes it. Image 3 (true df on the face) is harmed: its true class
# is excluded.
PROBS = np.array(
    [
        [0.0, 0.0, 0.0, 0.9, 0.0, 0.1, 0.0],  # df on leg, true df: right both ways
        [0.0, 0.0, 0.0, 0.6, 0.3, 0.1, 0.0],  # face, true mel: df -> mel
        [0.0, 0.0, 0.0, 0.0, 0.2, 0.8, 0.0],  # back, true nv: right both ways
        [0.0, 0.0, 0.0, 0.7, 0.0, 0.3, 0.0],  # face, true df: df -> nv
    ]
)
LABELS = np.array([3, 4, 5, 3])
SITES = ["lower extremity", "face", "back", "face"]


def test_rules_effect_small_fixed_case() -> None:
    out = rules_effect(PROBS, LABELS, SITES, FACE_RULES)
    assert out["without"]["sensitivity"] == {
        "akiec": None,
        "bcc": None,
        "bkl": None,
        "df": 1.0,
        "mel": 0.0,
        "nv": 1.0,
        "vasc": None,
    }
    assert out["with"]["sensitivity"]["df"] == 0.5 and out["with"]["sensitivity"]["mel"] == 1.0
    assert out["without"]["balanced_accuracy"] == pytest.approx(2 / 3)
    assert out["with"]["balanced_accuracy"] == pytest.approx(2.5 / 3)
    assert out["changed"] == 2 and out["true_class_excluded"] == 1
    assert out["exclusions_by_rule"] == {"face-no-df": 2, "face-no-vasc": 2}
    with pytest.raises(ValueError, match="sites"):
        rules_effect(PROBS, LABELS, SITES[:2], FACE_RULES)


def test_rules_effect_decides_as_the_ruled_probabilities() -> None:
    """The "CNN + rules" row of the report and rules_effect apply the rules alike."""
    ruled = with_rules(PROBS, SITES, FACE_RULES)
    np.testing.assert_allclose(ruled.sum(axis=1), 1.0)
    out = rules_effect(PROBS, LABELS, SITES, FACE_RULES)
    recall_df = float((ruled.argmax(1)[LABELS == 3] == 3).mean())
    assert out["with"]["sensitivity"]["df"] == recall_df
