"""Offline predictions through the real Triton: folder or CSV in, CSV out, resumable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from contracts.labels import CLASSES
from serving.batch_predict import main

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
