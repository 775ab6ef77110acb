"""Offline predictions through the real Triton: folder or CSV in, CSV out, resumable."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from contracts.labels import CLASSES
from contracts.metadata import METADATA_FILE, read_metadata
from serving.batch_predict import main
from tests import gate_images as gi
from tests.fixtures_serving import MODEL_SIZE

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def test_folder_to_csv_equals_eager_and_resumes(
    triton, real_lesions_dir, lesions, expected, tmp_path, capsys
):
    ids, _ = lesions
    out = tmp_path / "predictions.csv"
    args = ["--input", str(real_lesions_dir), "--output", str(out), "--triton-url", triton.grpc_url,
            "--repository", str(triton.repository)]  # fmt: skip
    assert main([*args, "--batch-size", "8"]) == 0
    table = pd.read_csv(out).set_index("image_id")
    assert sorted(table.index) == sorted(ids)
    probs = table.loc[ids, list(CLASSES)].to_numpy()
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-5)
    assert list(table.loc[ids, "predicted"]) == [CLASSES[i] for i in expected.argmax(1)]
    assert set(table["model_version"]) == {1}

    # An interruption: 10 rows written, the 11th cut short. A rerun finishes the rest only.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:11]) + lines[11][:20])
    capsys.readouterr()
    assert main([*args, "--batch-size", "5"]) == 0
    assert "wrote 18 predictions" in capsys.readouterr().out
    resumed = out.read_text().splitlines(keepends=True)
    assert resumed[:11] == lines[:11]
    table = pd.read_csv(out)
    assert len(table) == 28 and table["image_id"].is_unique


def test_csv_inputs_and_undecodable_images(triton, real_lesions_dir, tmp_path, capsys):
    out = tmp_path / "from_ids.csv"
    url = ["--triton-url", triton.grpc_url, "--repository", str(triton.repository)]
    # HAM10000-style CSV: image_id column, images found below the CSV's folder.
    assert main(["--input", str(real_lesions_dir / "labels.csv"), "--output", str(out), *url]) == 0
    assert len(pd.read_csv(out)) == 28

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a JPEG")
    paths = [str(p) for p in sorted(real_lesions_dir.glob("*.jpg"))[:3]] + [str(broken)]
    listing = tmp_path / "list.csv"
    pd.DataFrame({"path": paths}).to_csv(listing, index=False)
    out2 = tmp_path / "from_paths.csv"
    capsys.readouterr()
    assert main(["--input", str(listing), "--output", str(out2), *url]) == 0
    captured = capsys.readouterr()
    assert "wrote 3 predictions" in captured.out and "broken" in captured.err
    assert list(pd.read_csv(out2)["image_id"]) == [p.split("/")[-1][:-4] for p in paths[:3]]

    assert main(["--input", str(tmp_path / "missing"), "--output", str(out2), *url]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_gate_refuses_rows_with_the_reason(
    gated_triton, real_lesions_dir, lesion_rows, gated_repository, tmp_path, capsys
):
    """The gateway's gate in batch: a black frame, a 1x1 PNG and a blurred photo get their
    reason in ``refusal`` and no probabilities, never sent to Triton; the photos are
    diagnosed with an empty ``refusal``; the score's threshold is the version's metadata.json
    (a copy with it just under one photo's score refuses that photo)."""
    folder = tmp_path / "in"
    folder.mkdir()
    ids = [r["image_id"] for r in lesion_rows[:3]]
    for i in ids:
        (folder / f"{i}.jpg").write_bytes((real_lesions_dir / f"{i}.jpg").read_bytes())
    (folder / "black.jpg").write_bytes(gi.encode(gi.black_frame()))
    (folder / "tiny.png").write_bytes(gi.one_pixel_png())
    quality = read_metadata(gated_repository / "skin_lesion" / "1").quality_thresholds()
    assert quality is not None
    blurry = gi.blurred(gi.contrasty_lesion(real_lesions_dir, MODEL_SIZE))
    (folder / "blurry.jpg").write_bytes(
        gi.encode(gi.expect_refusal("blurred", blurry, quality, MODEL_SIZE))
    )
    url = ["--triton-url", gated_triton.grpc_url, "--batch-size", "4"]

    def run(out, repository, *extra):
        capsys.readouterr()
        argv = ["--input", str(folder), "--output", str(out), "--repository", str(repository)]
        assert main([*argv, *url, *extra]) == 0
        table = pd.read_csv(out, dtype=str, keep_default_na=False).set_index("image_id")
        return table, capsys.readouterr()

    table, printed = run(tmp_path / "gated.csv", gated_repository)
    expected = {"black": "uniform", "tiny": "too_small", "blurry": "blurred"} | dict.fromkeys(
        ids, ""
    )
    assert table["refusal"].to_dict() == expected
    for image_id, reason in expected.items():
        cells = table.loc[image_id, [*CLASSES, "predicted"]]
        if reason:
            assert (cells == "").all(), image_id  # no ranking for a refused row
        else:
            assert sum(float(p) for p in cells[list(CLASSES)]) == pytest.approx(1, abs=1e-5)
            assert cells["predicted"] in CLASSES
    assert "1 blurred, 1 too_small, 1 uniform" in printed.out

    score = gi.score_of(gated_triton.grpc_url, gi.lesion(real_lesions_dir, ids[1]), MODEL_SIZE)
    margin = max(abs(score) * 1e-3, 1e-3)
    copy = gi.version_copy(gated_repository, tmp_path / "copy", gi.ood_limit(score - margin))
    table, _ = run(tmp_path / "strict.csv", copy)
    assert table.loc[ids[1], "refusal"] == "out_of_distribution"
    assert table.loc[ids[1], "predicted"] == ""

    table, printed = run(tmp_path / "off.csv", copy, "--no-quality-checks", "--no-ood-checks")
    assert set(table["refusal"]) == {""} and "refused" not in printed.out


def test_predicted_is_the_class_the_versions_decision_rule_names(
    triton, real_lesions_dir, tmp_path
):
    """``predicted`` follows metadata.json's decision rule, as the gateway's ``top_class``: the
    class this model ranks first most often gets a large prior, and the balanced rule (tau 1.5)
    names another class for those photos; the probabilities are unchanged."""
    url = ["--triton-url", triton.grpc_url]
    plain = tmp_path / "plain.csv"
    argv = ["--input", str(real_lesions_dir), "--repository"]
    assert main([*argv, str(triton.repository), "--output", str(plain), *url]) == 0
    before = pd.read_csv(plain).set_index("image_id").sort_index()
    common = before["predicted"].mode()[0]
    repo = tmp_path / "repo"
    shutil.copytree(triton.repository, repo)
    version = repo / "skin_lesion" / "1"
    meta = read_metadata(version)
    priors = {c: (0.94 if c == common else 0.01) for c in CLASSES}
    meta.decision = {"rule": "balanced", "tau": 1.5, "class_priors": priors}
    meta.write(version / METADATA_FILE)
    out = tmp_path / "balanced.csv"
    assert main([*argv, str(repo), "--output", str(out), *url]) == 0
    after = pd.read_csv(out).set_index("image_id").sort_index()
    probs = after[list(CLASSES)].to_numpy()
    np.testing.assert_allclose(probs, before[list(CLASSES)].to_numpy(), rtol=0, atol=0)
    log_priors = np.log([priors[c] for c in CLASSES])
    named = np.argmax(np.log(probs) - 1.5 * log_priors, axis=1)
    assert list(after["predicted"]) == [CLASSES[i] for i in named]
    assert (after["predicted"] != before["predicted"]).any()
