"""The rule engine and the shipped rules file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from contracts.labels import BODY_SITES, CLASSES, MALIGNANT
from contracts.rules import Rule, Rules, RulesError, apply_rules, load_rules, validate_rules

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "configs" / "body_location_rules.yaml"

FACE_RULES = validate_rules(
    [
        Rule("face-no-df", "face", ("df",), "rare on the face"),
        Rule("face-no-vasc", "face", ("vasc", "df"), "test rule"),
    ]
)
probabilities = st.lists(st.floats(0, 1), min_size=7, max_size=7).filter(lambda p: sum(p) > 1e-6)


def write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_shipped_rules_load_and_never_exclude_malignant() -> None:
    rules = load_rules(SHIPPED)
    assert rules.rules, "the shipped file should hold at least one rule"
    for rule in rules.rules:
        assert not set(rule.exclude) & MALIGNANT and not rule.allow_malignant
        assert rule.reason and rule.evidence, rule.id


@pytest.mark.parametrize("site", BODY_SITES)
def test_shipped_rules_keep_malignant_mass_at_every_site(site: str) -> None:
    p = np.full(len(CLASSES), 1 / len(CLASSES))
    result = apply_rules(p, site, load_rules(SHIPPED))
    kept = dict(result.ranking)
    assert all(kept[c] >= p[0] for c in MALIGNANT)  # exclusions only move mass onto the rest


@given(probabilities)
def test_unknown_site_excludes_nothing_and_keeps_order(p: list[float]) -> None:
    result = apply_rules(p, "unknown", FACE_RULES)
    assert result.excluded == []
    expected = np.asarray(p) / sum(p)
    assert [c for c, _ in result.ranking] == sorted(
        CLASSES, key=lambda c: -expected[CLASSES.index(c)]
    )
    for cls, prob in result.ranking:
        assert prob == pytest.approx(expected[CLASSES.index(cls)])


@given(probabilities, st.sampled_from(BODY_SITES))
def test_ranking_sums_to_one_and_is_sorted(p: list[float], site: str) -> None:
    result = apply_rules(p, site, FACE_RULES)
    probs = [x for _, x in result.ranking]
    assert math.isclose(sum(probs), 1.0, abs_tol=1e-9)
    assert probs == sorted(probs, reverse=True)
    assert len(result.ranking) + len(result.excluded) == len(CLASSES)


def test_face_exclusion_renormalises_and_reports() -> None:
    p = [0.1, 0.1, 0.1, 0.4, 0.2, 0.05, 0.05]
    result = apply_rules(p, "face", FACE_RULES)
    assert [(e.cls, e.rule_id, e.original_prob) for e in result.excluded] == [
        ("df", "face-no-df", 0.4),
        ("vasc", "face-no-vasc", 0.05),
    ]
    assert result.ranking[0] == ("mel", pytest.approx(0.2 / 0.55))
    assert [c for c, _ in result.ranking] == [
        "mel",
        "akiec",
        "bcc",
        "bkl",
        "nv",
    ]  # ties: class order


def test_all_mass_on_excluded_class_gives_flat_ranking() -> None:
    result = apply_rules([0, 0, 0, 1, 0, 0, 0], "face", FACE_RULES)
    assert [p for _, p in result.ranking] == pytest.approx([0.2] * 5)


@pytest.mark.parametrize(
    ("probs", "site", "message"),
    [
        ([0.5, 0.5], "face", "expected 7"),
        ([-0.1] + [0.2] * 6, "face", "non-negative"),
        ([float("nan")] * 7, "face", "finite"),
        ([0.1] * 7, "elbow", "unknown body site"),
    ],
)
def test_apply_rejects_bad_input(probs: list[float], site: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_rules(probs, site, FACE_RULES)


def test_malignant_exclusion_needs_explicit_allow(tmp_path: Path) -> None:
    rule = {"id": "r", "site": "acral", "exclude": ["mel"], "reason": "why"}
    with pytest.raises(RulesError, match="allow_malignant"):
        load_rules(write(tmp_path, {"rules": [rule]}))
    rules = load_rules(write(tmp_path, {"rules": [{**rule, "allow_malignant": True}]}))
    assert [e.cls for e in apply_rules([1 / 7] * 7, "acral", rules).excluded] == ["mel"]
    # A Rules object built by hand cannot smuggle one past the engine either.
    sneaky = Rules((Rule("r", "acral", ("mel",), "why"),))
    with pytest.raises(ValueError, match="malignant"):
        apply_rules([1 / 7] * 7, "acral", sneaky)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"site": "unknown", "exclude": ["df"]}, "must exclude nothing"),
        ({"site": "elbow", "exclude": ["df"]}, "unknown site"),
        ({"site": "face", "exclude": ["dfx"]}, "unknown classes"),
        ({"site": "face", "exclude": "df"}, "must be a list"),
        ({"site": "face", "exclude": ["df"], "colour": "red"}, "unknown keys"),
        ({"site": "face", "exclude": ["df"], "reason": " "}, "'reason' is empty"),
        ({"site": "face", "exclude": ["df"], "allow_malignant": "yes"}, "true or false"),
        ({"site": "face", "exclude": list(CLASSES), "allow_malignant": True}, "every class"),
    ],
)
def test_loader_rejects_bad_rules(tmp_path: Path, rule: dict, message: str) -> None:
    full = {"id": "r1", "reason": "because", **rule}
    with pytest.raises(RulesError, match=message):
        load_rules(write(tmp_path, {"rules": [full]}))


def test_loader_rejects_duplicates_missing_keys_and_bad_files(tmp_path: Path) -> None:
    rule = {"id": "r1", "site": "face", "exclude": ["df"], "reason": "because"}
    with pytest.raises(RulesError, match="unique"):
        load_rules(write(tmp_path, {"rules": [rule, rule]}))
    with pytest.raises(RulesError, match=r"lacks \['reason'\]"):
        load_rules(write(tmp_path, {"rules": [{k: v for k, v in rule.items() if k != "reason"}]}))
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("rules: [unclosed")
    with pytest.raises(RulesError, match="not valid YAML"):
        load_rules(tmp_path / "bad.yaml")
