"""Reference statistics at export: the recorded split on the real data, or ``null`` with a
warning when the data cannot be reached; the same image statistics as the gateway's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contracts.images import prepare_image
from contracts.labels import BODY_SITES, CLASSES
from tests.fixtures_serving import MODEL_SIZE
from tests.monitoring.helpers import with_datamodule
from training import data
from training.evaluation import thresholds as th
from training.export import ExportOptions, export
from training.reference_stats import BRIGHTNESS_EDGES, image_stats

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_image_statistics_equal_what_the_gateway_records(
    ham_dir: Path, real_lesions_dir: Path
) -> None:
    """Training reads files with cv2, the gateway decodes uploads with Pillow: the brightness,
    contrast and size stored in the reference must mean what the gateway stores."""
    paths = (
        sorted(real_lesions_dir.glob("*.jpg"))[::4] + sorted((ham_dir / "images").glob("*.jpg"))[:5]
    )
    for path in paths:
        ours = image_stats(str(path), MODEL_SIZE)
        gateway = prepare_image(path.read_bytes(), MODEL_SIZE, 40_000_000)
        assert ours[0] == pytest.approx(gateway.brightness, abs=0.01), path
        assert ours[1] == pytest.approx(gateway.contrast, abs=0.01), path
        assert ours[2:] == (gateway.decoded.width, gateway.decoded.height)


def test_export_stores_the_reference_of_the_recorded_split(
    smoke_ckpt: Path,
    ham_dir: Path,
    ham_image_size: tuple[int, int],
    real_lesions_dir: Path,
    tmp_path: Path,
) -> None:
    recorded = {"data_dir": str(ham_dir), "val_fraction": 0.2, "test_fraction": 0.1, "seed": 7}
    ckpt = with_datamodule(smoke_ckpt, tmp_path / "fit.ckpt", **recorded)
    version = export(
        ckpt,
        tmp_path / "repo",
        options=ExportOptions(parity_images=real_lesions_dir, reference_images=60),
    )
    reference = json.loads((version / "metadata.json").read_text())["reference"]

    frame = data.validate(data.load_ham10000(ham_dir), str(ham_dir))
    split = data.grouped_split(frame, 0.2, 0.1, seed=7)  # what the recorded settings give
    train = split["train"]
    assert reference["images"] == {"train": len(train), "val": len(split["val"]), "sampled": 60}
    assert reference["dataset_version"] == data.dataset_version(frame)
    assert reference["data"]["data_dir"] == str(ham_dir)
    features = reference["features"]
    assert features["diagnosis"]["categories"] == list(CLASSES)
    assert features["diagnosis"]["counts"] == data.class_counts(train["label"]).tolist()
    sites = train["site"].value_counts()
    assert features["body_site"]["counts"] == [int(sites.get(s, 0)) for s in BODY_SITES]
    priors = np.array(features["diagnosis"]["counts"]) / len(train)
    assert list(reference["class_priors"].values()) == pytest.approx(priors, abs=1e-6)
    assert sum(features["predicted_class"]["counts"]) == 60
    assert features["brightness"]["edges"] == list(BRIGHTNESS_EDGES)
    for name in ("brightness", "contrast", "image_width", "image_height"):
        assert sum(features[name]["counts"]) == 60, name
    # The reference records the data's own image size.
    height, width = ham_image_size
    assert features["image_width"]["mean"] == width and features["image_height"]["mean"] == height
    assert 100 < features["brightness"]["mean"] < 200
    assert len(reference["version"]) == 12

    # The referral operating points, chosen on the same recorded validation split by the
    # evaluation's rule: as many positives as that split holds, the target held with confidence.
    thresholds = json.loads((version / "metadata.json").read_text())["thresholds"]
    val_labels = split["val"]["label"]
    positives = {
        "mel": int((val_labels == "mel").sum()),
        "malignant": int(val_labels.isin(["akiec", "bcc", "mel"]).sum()),
    }
    for target, n in positives.items():
        point = thresholds[target]
        assert point["rule"] == th.RULE and point["confidence"] == th.DEFAULT_CONFIDENCE
        assert point["val_positives"] == n and 0 < point["threshold"] <= 1
        lower = th.sensitivity_lower_bound(round(point["val_sensitivity"] * n), n, 0.95)
        assert point["val_sensitivity_lower_bound"] == pytest.approx(lower)
        assert lower >= 0.95 or point["val_sensitivity"] == 1.0  # reached, or all referred


def test_export_without_the_data_writes_null_and_warns(
    smoke_ckpt: Path, real_lesions_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HAM10000_DIR", raising=False)
    ckpt = with_datamodule(smoke_ckpt, tmp_path / "fit.ckpt", data_dir=str(tmp_path / "gone"))
    with pytest.warns(UserWarning, match=r"reference: null.*missing here.*--reference-data"):
        version = export(
            ckpt, tmp_path / "repo", options=ExportOptions(parity_images=real_lesions_dir)
        )
    assert json.loads((version / "metadata.json").read_text())["reference"] is None
    assert json.loads((version / "metadata.json").read_text())["thresholds"] == {}
    with pytest.warns(UserWarning, match="records no data module"):
        version = export(
            smoke_ckpt, tmp_path / "repo", options=ExportOptions(parity_images=real_lesions_dir)
        )
    assert json.loads((version / "metadata.json").read_text())["reference"] is None


def test_cli_export_says_why_the_reference_is_missing(
    smoke_ckpt: Path, real_lesions_dir: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HAM10000_DIR"}
    ckpt = with_datamodule(smoke_ckpt, tmp_path / "fit.ckpt", data_dir=str(tmp_path / "gone"))
    done = subprocess.run(
        [sys.executable, "-m", "training", "export", "--checkpoint", str(ckpt),
         "--repository", str(tmp_path / "repo"), "--parity-images", str(real_lesions_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "reference: null" in done.stderr and "--reference-data" in done.stderr
    meta = json.loads((tmp_path / "repo" / "skin_lesion" / "1" / "metadata.json").read_text())
    assert meta["reference"] is None


def test_reference_data_overrides_a_missing_recorded_folder(
    smoke_ckpt: Path, ham_dir: Path, real_lesions_dir: Path, tmp_path: Path
) -> None:
    ckpt = with_datamodule(smoke_ckpt, tmp_path / "fit.ckpt", data_dir=str(tmp_path / "gone"))
    version = export(
        ckpt,
        tmp_path / "repo",
        options=ExportOptions(
            parity_images=real_lesions_dir, reference_data=ham_dir, reference_images=20
        ),
    )
    reference = json.loads((version / "metadata.json").read_text())["reference"]
    assert reference["data"]["data_dir"] == str(ham_dir)
    assert reference["images"]["sampled"] == 20
    assert sum(reference["features"]["body_site"]["counts"]) == reference["images"]["train"]
    assert isinstance(pd.Timestamp(reference["created_at"]), pd.Timestamp)
