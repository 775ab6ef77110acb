"""Rules proposed from the class-by-site counts of a metadata CSV, for a clinician to review."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.labels import BODY_SITES, CLASSES, MALIGNANT
from contracts.rules import load_rules
from serving.rules_propose import count_table, main, propose


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
