"""The rule engine, the shipped rules file, the proposer and the offline evaluation."""

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
from serving.rules_propose import count_table, main, propose
from training.rules_eval import rules_effect

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


def test_propose_on_real_metadata_only_benign_and_well_supported(
    ham_dir: Path, tmp_path: Path
) -> None:
    counts = count_table(ham_dir / "HAM10000_metadata.csv")
    rules = propose(counts, min_count=1, min_expected=5.0)
    total = sum(counts.values())
    for rule in rules:
        (cls,) = rule.exclude
        site_n = sum(counts[rule.site, c] for c in CLASSES)
        cls_n = sum(counts[s, cls] for s in BODY_SITES)
        assert cls not in MALIGNANT and counts[rule.site, cls] == 0
        assert site_n * cls_n / total >= 5.0
        assert f"0 of {site_n} {rule.site} images" in rule.reason and "not proof" in rule.reason
    # HAM10000 has no df on the face among hundreds of face images: the proposer must see it.
    assert "face-no-df" in [r.id for r in rules]
    out = tmp_path / "proposed.yaml"
    assert main(["--metadata", str(ham_dir / "HAM10000_metadata.csv"), "--out", str(out)]) == 0
    assert [r.id for r in load_rules(out).rules] == [r.id for r in rules]


def test_propose_reports_bad_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m.csv").write_text("image_id,dx\nx,df\n")
    assert main(["--metadata", str(tmp_path / "m.csv")]) == 2
    assert "needs a class column" in capsys.readouterr().err


def test_rules_effect_small_fixed_case() -> None:
    # Four images; the face rules remove df (and vasc, at 0 here). Image 1 (true mel on the
    # face) was predicted df: the rule fixes it. Image 3 (true df on the face) is harmed:
    # its true class is excluded.
    probs = np.array(
        [
            [0.0, 0.0, 0.0, 0.9, 0.0, 0.1, 0.0],  # df on leg, true df: right both ways
            [0.0, 0.0, 0.0, 0.6, 0.3, 0.1, 0.0],  # face, true mel: df -> mel
            [0.0, 0.0, 0.0, 0.0, 0.2, 0.8, 0.0],  # back, true nv: right both ways
            [0.0, 0.0, 0.0, 0.7, 0.0, 0.3, 0.0],  # face, true df: df -> nv
        ]
    )
    labels = np.array([3, 4, 5, 3])
    sites = ["lower extremity", "face", "back", "face"]
    out = rules_effect(probs, labels, sites, FACE_RULES)
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
        rules_effect(probs, labels, sites[:2], FACE_RULES)
