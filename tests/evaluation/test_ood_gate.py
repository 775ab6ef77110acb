"""The image-gate report on real exported versions: one with the gate (export's quality
thresholds and out-of-distribution score) and one without, end to end, its figures checked
against the per-image rows, the gateway's own screening and a recomputed ROC AUC."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from contracts.images import index_images
from contracts.metadata import read_metadata
from contracts.quality import OUT_OF_DISTRIBUTION, TOO_SMALL, UNIFORM
from serving.gate import screen
from tests.factories import smoke_repository
from training.evaluation.ood_gate import GateSettings, main, measure_versions
from training.ood_corpus import DEGRADED_KINDS, FAR_KINDS, far_from_lesion

pytestmark = pytest.mark.slow
MAX_TEST = 100
DEGRADED_LESIONS = 3


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory, real_lesions_dir: Path) -> Path:
    """A smoke version exported with the gate (fitted on a split of the real photos)."""
    return smoke_repository(tmp_path_factory.mktemp("gated"), real_lesions_dir)


@pytest.fixture(scope="module")
def ungated(tmp_path_factory: pytest.TempPathFactory, real_lesions_dir: Path) -> Path:
    """A smoke version exported without the gate, as versions exported before it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no data: no reference, no thresholds
        return smoke_repository(tmp_path_factory.mktemp("ungated"), real_lesions_dir, gate=False)


def settings(ham_dir: Path, real_lesions_dir: Path, **kw) -> GateSettings:
    return GateSettings(
        data_dir=str(ham_dir),
        real_lesions=str(real_lesions_dir),
        max_test=MAX_TEST,
        degraded_lesions=DEGRADED_LESIONS,
        **kw,
    )


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "images.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_report_of_a_gated_version(
    gated: Path, ham_dir: Path, real_lesions_dir: Path, tmp_path: Path
) -> None:
    meta = read_metadata(gated)
    threshold, quality = meta.ood_threshold(), meta.quality_thresholds()
    assert threshold is not None and quality is not None, "export wrote no gate"
    [folder] = measure_versions([gated], tmp_path, settings(ham_dir, real_lesions_dir))
    for name in ("gate.md", "gate.json", "images.csv", "scores.png", "roc.png"):
        assert (folder / name).stat().st_size > 0, name
    assert (folder / "scores.png").read_bytes()[:4] == b"\x89PNG"
    figures = json.loads((folder / "gate.json").read_text())
    assert figures["version"]["ood_threshold"] == threshold
    assert figures["version"]["quality_thresholds"] == quality.to_dict()
    n_real = len(index_images(real_lesions_dir))
    ind = figures["in_distribution"]
    assert (ind["test"]["n"], ind["real"]["n"]) == (MAX_TEST, n_real)
    assert figures["far"]["overall"]["n"] == len(far_from_lesion())
    assert set(figures["far"]["kinds"]) == set(FAR_KINDS)
    assert set(figures["degraded"]["kinds"]) == set(DEGRADED_KINDS)
    assert all(k["n"] == DEGRADED_LESIONS for k in figures["degraded"]["kinds"].values())

    # Every summary is the count of its rows, and each row's answer follows from its checks.
    table = rows(folder)
    for row in table:
        assert (float(row["score"]) > threshold) == (row["ood"] == "True"), row["name"]
        expected = row["quality"] or (OUT_OF_DISTRIBUTION if row["ood"] == "True" else "")
        assert row["reason"] == expected, row["name"]
    for corpus, summary in [
        ("test", ind["test"]),
        ("real", ind["real"]),
        ("far", figures["far"]["overall"]),
        ("degraded", figures["degraded"]["overall"]),
    ]:
        mine = [r for r in table if r["corpus"] == corpus]
        assert summary["refused"]["count"] == sum(1 for r in mine if r["reason"]), corpus
        assert summary["score_alone"]["count"] == sum(1 for r in mine if r["ood"] == "True")
        assert sum(summary["reasons"].values()) == summary["refused"]["count"]

    # The quality checks are the gateway's: its screening of each real photo's bytes agrees.
    by_name = {r["name"]: r for r in table if r["corpus"] == "real"}
    for path in index_images(real_lesions_dir).values():
        screened = screen(Path(path).read_bytes(), meta.input_size, 10**8, None, quality)
        code = screened.refusal.code if screened.refusal else ""
        assert by_name[Path(path).stem]["quality"] == code, path

    # Refusals that follow from the thresholds whatever the model: a frame of one colour has
    # no contrast, and a 24x24 crop is under the smallest side.
    assert quality.min_contrast > 0 and quality.min_short_side > 24
    uniform = figures["far"]["kinds"]["uniform"]
    assert uniform["reasons"] == {UNIFORM: uniform["n"]}
    crops = figures["degraded"]["kinds"]["crop_24x24"]
    assert crops["reasons"] == {TOO_SMALL: crops["n"]}

    score = figures["score"]
    test = [float(r["score"]) for r in table if r["corpus"] == "test"]
    far = [float(r["score"]) for r in table if r["corpus"] == "far"]
    auc = roc_auc_score([0] * len(test) + [1] * len(far), test + far)
    assert score["auc"]["test_vs_far"] == pytest.approx(auc)
    assert score["quantiles"]["test"]["p50"] == pytest.approx(float(np.median(test)))
    markdown = (folder / "gate.md").read_text()
    assert "## Far from lesion" in markdown and "![roc](roc.png)" in markdown


def test_report_of_a_version_without_the_gate(
    ungated: Path, ham_dir: Path, real_lesions_dir: Path, tmp_path: Path
) -> None:
    assert read_metadata(ungated).gate is None
    [folder] = measure_versions([ungated], tmp_path, settings(ham_dir, real_lesions_dir))
    figures = json.loads((folder / "gate.json").read_text())
    # As the gateway serves it: no quality thresholds, no score, nothing refused.
    assert figures["score"] is None and figures["version"]["quality_thresholds"] is None
    assert any("no out-of-distribution output" in n for n in figures["notes"])
    assert figures["far"]["overall"]["refused"]["count"] == 0
    assert not (folder / "scores.png").exists()
    assert "quality checks only" in (folder / "gate.md").read_text()


def test_fitted_quality_and_several_versions_compared(
    ungated: Path, ham_dir: Path, real_lesions_dir: Path, tmp_path: Path
) -> None:
    s = settings(ham_dir, real_lesions_dir, fit_quality=True, quality_fit_images=300)
    first, second = measure_versions([ungated, ungated], tmp_path, s)
    assert first != second  # the same name twice: the second report gets its own folder
    a, b = (json.loads((f / "gate.json").read_text()) for f in (first, second))
    assert "fitted here" in a["version"]["quality_source"]
    assert a["far"] == b["far"] and a["in_distribution"] == b["in_distribution"]  # seeded
    assert a["far"]["kinds"]["uniform"]["refused"]["rate"] == 1.0
    compared = json.loads((tmp_path / "comparison.json").read_text())
    assert [c["version"] for c in compared] == [first.name, second.name]
    assert "versions compared" in (tmp_path / "comparison.md").read_text()


def test_cli(
    gated: Path,
    ham_dir: Path,
    real_lesions_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = ["--data-dir", str(ham_dir), "--max-test", "20", "--degraded-lesions", "1"]
    repository, name = gated.parent.parent, gated.parent.name
    argv = ["--repository", str(repository), "--name", name, "--version", gated.name]
    assert main([*argv, "--out", str(tmp_path), *common]) == 0
    assert (tmp_path / f"{name}_v{gated.name}" / "gate.md").is_file()
    assert f"{name}_v{gated.name} (score " in capsys.readouterr().out
    assert main([str(tmp_path), "--out", str(tmp_path / "x"), *common]) == 2
    assert "is not an exported version" in capsys.readouterr().err
