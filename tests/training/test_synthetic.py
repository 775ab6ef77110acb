"""The synthetic set: HAM10000's layout and frequencies, deterministic, learnable."""

from __future__ import annotations

import numpy as np
import pandas as pd

from contracts.images import read_image
from contracts.labels import BODY_SITES, CLASSES, CONFIRMATIONS
from training import data, synthetic


def test_constants_match_the_real_metadata(ham_dir):
    for cls in CLASSES:  # the tables add up and use the project's vocabularies
        assert sum(synthetic.SITE_COUNTS[cls].values()) == synthetic.CLASS_COUNTS[cls]
        assert sum(synthetic.DX_TYPE_COUNTS[cls].values()) == synthetic.CLASS_COUNTS[cls]
        assert set(synthetic.SITE_COUNTS[cls]) <= set(BODY_SITES)
        assert set(synthetic.DX_TYPE_COUNTS[cls]) <= set(CONFIRMATIONS)
    full = ham_dir.parent / "HAM10000_metadata.csv"
    if not full.is_file():
        # Only the training set (90% of the lesions of each class): compare proportions.
        real = pd.read_csv(ham_dir / data.METADATA_FILE)["dx"].value_counts(normalize=True)
        total = sum(synthetic.CLASS_COUNTS.values())
        for cls in CLASSES:
            assert abs(synthetic.CLASS_COUNTS[cls] / total - real[cls]) < 0.01
        return
    real = pd.read_csv(full)  # the official file (10,015 rows) beside it, as in ../shared/data
    assert real["dx"].value_counts().to_dict() == synthetic.CLASS_COUNTS
    assert real["sex"].value_counts().to_dict() == synthetic.SEX_COUNTS
    sites = pd.crosstab(real["dx"], real["localization"])
    dx_types = pd.crosstab(real["dx"], real["dx_type"])
    for cls in CLASSES:
        assert synthetic.SITE_COUNTS[cls] == {s: n for s, n in sites.loc[cls].items() if n}
        assert synthetic.DX_TYPE_COUNTS[cls] == {s: n for s, n in dx_types.loc[cls].items() if n}
    ages = real.groupby("dx")["age"].agg(["mean", "std"]).round(1)
    assert {c: tuple(ages.loc[c]) for c in CLASSES} == synthetic.AGE


def test_synthetic_set_is_deterministic_ham_layout(tmp_path):
    a = synthetic.make_synthetic(tmp_path / "a", n_images=150, seed=3)
    b = synthetic.make_synthetic(tmp_path / "b", n_images=150, seed=3)
    df = data.validate(data.load_ham10000(a), "synthetic", decode=True)
    assert len(df) == sum(synthetic.class_sizes(150).values())
    assert df["label"].value_counts().to_dict() == synthetic.class_sizes(150)
    assert df["group"].nunique() < len(df)  # some lesions have several photos, as in HAM10000
    assert df["date"].notna().all()  # so a temporal split can be tried on it
    assert data.dataset_version(df, tmp_path) == data.dataset_version(
        data.load_ham10000(b), tmp_path
    )
    image = read_image(df["path"].iloc[0])
    assert image.shape == (150, 200, 3) and image.dtype == np.uint8
    c = synthetic.make_synthetic(tmp_path / "c", n_images=150, seed=4)
    assert data.dataset_version(data.load_ham10000(c), tmp_path) != data.dataset_version(
        df, tmp_path
    )


def _lesion_features(path: str) -> np.ndarray:
    """Blob size and mean colour against the background (median of the top and bottom rows)."""
    image = read_image(path).astype(float)
    skin = np.median(np.concatenate([image[:10], image[-10:]]).reshape(-1, 3), axis=0)
    diff = image - skin
    blob = np.abs(diff).sum(-1) > 60
    return np.concatenate([[10 * blob.mean()], diff[blob].mean(0) / 50 if blob.any() else [0] * 3])


def test_synthetic_classes_are_learnable(tmp_path):
    # Nearest class centroid on 4 hand-made features, tested on held-out lesions, beats
    # chance (1/7) by far: the images carry class information a CNN can find.
    df = data.load_ham10000(synthetic.make_synthetic(tmp_path, n_images=150, seed=0))
    splits = data.grouped_split(df, 0.0, 0.3, seed=0)
    train, test = (
        np.stack([_lesion_features(p) for p in splits[s]["path"]]) for s in ("train", "test")
    )
    labels = splits["train"]["label"].to_numpy()
    centroids = np.stack([train[labels == c].mean(0) for c in CLASSES])
    predicted = np.argmin(((test[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    truth = splits["test"]["label"].map(CLASSES.index).to_numpy()
    recall = [np.mean(predicted[truth == i] == i) for i in range(len(CLASSES))]
    assert np.mean(recall) > 0.7, recall


def test_the_synthetic_set_stays_synthetic_when_named_by_its_path(tmp_path, monkeypatch):
    """A split rebuilt from a recorded path (export's gate, evaluation) must not take the
    synthetic set for real data: its folder carries a marker the data module reads."""
    from training.datamodule import LesionDataModule

    monkeypatch.delenv("HAM10000_DIR", raising=False)
    root = synthetic.make_synthetic(tmp_path / "set", n_images=70)
    assert synthetic.is_synthetic(root) and not synthetic.is_synthetic(tmp_path)
    dm = LesionDataModule(data_dir=str(root), image_size=(48, 64), num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.synthetic is True and dm.dataset_version.startswith("synthetic-")
    # A set written before the marker existed gets it when it is next asked for.
    (root / synthetic.MARKER_FILE).unlink()
    assert synthetic.make_synthetic(root, n_images=70) == root and synthetic.is_synthetic(root)
