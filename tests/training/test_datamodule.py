"""LesionDataModule end to end on real images (and on synthetic ones when nothing is set)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from contracts.errors import ConfigError, DataError
from contracts.images import eval_resize, read_image
from contracts.labels import CLASS_INDEX, CLASSES
from training import data
from training.augment import AugmentOptions
from training.datamodule import LesionDataModule


def _clinic_csv(tmp_path: Path, image: str, labels: list[str]) -> str:
    """A clinic CSV whose rows all point at one real image (distinct ids and lesions)."""
    rows = [{"path": image, "label": y, "image_id": f"p{i}"} for i, y in enumerate(labels)]
    pd.DataFrame(rows).to_csv(tmp_path / "clinic.csv", index=False)
    return str(tmp_path / "clinic.csv")


def _check_batch(batch: dict, n: int, dm: LesionDataModule, split: str) -> None:
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (n, 112, 150, 3)
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (n,)
    assert batch["index"].dtype == torch.int64 and batch["index"].shape == (n,)
    rows = dm.splits[split].iloc[batch["index"].numpy()]
    assert batch["label"].tolist() == [CLASS_INDEX[y] for y in rows["label"]]


def test_real_data_through_the_datamodule(ham_dir, ham_metadata):
    dm = LesionDataModule(data_dir=str(ham_dir), batch_size=8, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    assert not dm.synthetic and re.fullmatch(r"[0-9a-f]{64}", dm.dataset_version)
    assert dm.image_size == (112, 150)
    assert sum(len(s) for s in dm.splits.values()) == len(ham_metadata)
    for part in dm.splits.values():
        assert list(part.columns) == list(data.COLUMNS) and set(part["label"]) == set(CLASSES)
    counts = torch.tensor(data.class_counts(dm.splits["train"]["label"]), dtype=torch.float32)
    weights = dm.class_weights
    assert weights.dtype == torch.float32 and weights.shape == (7,)
    assert (counts * weights).sum() / counts.sum() == pytest.approx(1.0)
    assert weights[CLASS_INDEX["nv"]] < 1 < weights[CLASS_INDEX["df"]]

    _check_batch(next(iter(dm.train_dataloader())), 8, dm, "train")
    batch = next(iter(dm.val_dataloader()))
    _check_batch(batch, 8, dm, "val")
    first = dm.splits["val"]["path"].iloc[int(batch["index"][0])]
    expected = eval_resize(read_image(first), (112, 150))
    np.testing.assert_array_equal(batch["image"][0].numpy(), expected)
    assert dm.summary()["val"] == dm.splits["val"]["label"].value_counts()[list(CLASSES)].to_dict()


def test_predict_covers_the_test_split_in_order(ham_dir):
    dm = LesionDataModule(data_dir=str(ham_dir), batch_size=256, num_workers=0, seed=3)
    dm.setup("predict")
    indices = torch.cat([b["index"] for b in dm.predict_dataloader()])
    assert indices.tolist() == list(range(len(dm.splits["test"])))
    cached = torch.cat([b["image"] for b in dm.test_dataloader()])  # second pass: from memory
    assert cached.shape == (len(dm.splits["test"]), 112, 150, 3)


def test_limit_per_class_caps_training_only(ham_dir):
    dm = LesionDataModule(data_dir=str(ham_dir), limit_per_class=5, num_workers=0)
    dm.setup()
    assert dm.summary()["train"] == dict.fromkeys(CLASSES, 5)
    assert len(dm.splits["val"]) > 1000
    assert torch.equal(dm.class_weights, torch.ones(7))  # balanced training set


def test_synthetic_when_nothing_is_configured(monkeypatch):
    monkeypatch.delenv("HAM10000_DIR", raising=False)
    dm = LesionDataModule(batch_size=4, num_workers=0)
    dm.prepare_data()
    dm.setup()
    assert dm.synthetic and dm.dataset_version.startswith("synthetic-")
    assert Path(dm.source).parent.name == "synthetic"
    _check_batch(next(iter(dm.train_dataloader())), 4, dm, "train")


def test_temporal_split_on_synthetic_dates(monkeypatch):
    monkeypatch.delenv("HAM10000_DIR", raising=False)
    dm = LesionDataModule(split="temporal", temporal_cutoff="2019-01-01", num_workers=0)
    dm.setup()
    first_seen = pd.concat(dm.splits.values()).groupby("group")["date"].min()
    for name in ("train", "val"):
        assert (first_seen[dm.splits[name]["group"]] < pd.Timestamp("2019-01-01")).all()
    assert (first_seen[dm.splits["test"]["group"]] >= pd.Timestamp("2019-01-01")).all()
    # Validation is the tail of training by date.
    assert (
        first_seen[dm.splits["val"]["group"]].min() >= first_seen[dm.splits["train"]["group"]].max()
    )


def test_hyperparameters_rebuild_the_datamodule(tmp_path):
    dm = LesionDataModule(image_size=(64, 80), augment=AugmentOptions(hflip=0.1, hue=0))
    torch.save(dict(dm.hparams), tmp_path / "hparams.pt")  # as in a checkpoint
    again = LesionDataModule(**torch.load(tmp_path / "hparams.pt", weights_only=True))
    assert again.augment == dm.augment and again.image_size == (64, 80)


def test_each_worker_augments_differently(ham_dir, tmp_path):
    # Forked workers share the parent's random state unless reseeded: batch 0 (worker 0) and
    # batch 1 (worker 1) of the same image would then be augmented identically.
    image = str(next((ham_dir / "images").glob("*.jpg")))
    csv = _clinic_csv(tmp_path, image, ["nv"] * 16)
    dm = LesionDataModule(
        csv_path=csv, batch_size=4, num_workers=2, val_fraction=0, test_fraction=0
    )
    dm.setup()
    batches = [b["image"] for _, b in zip(range(2), dm.train_dataloader(), strict=False)]
    assert not torch.equal(batches[0], batches[1])


def test_balanced_sampler_draws_classes_evenly(ham_dir, tmp_path):
    image = str(next((ham_dir / "images").glob("*.jpg")))
    csv = _clinic_csv(tmp_path, image, ["nv"] * 45 + ["df"] * 5)
    kwargs = dict(csv_path=csv, batch_size=10, num_workers=0, val_fraction=0, test_fraction=0)
    plain = LesionDataModule(**kwargs)
    balanced = LesionDataModule(**kwargs, balanced_sampler=True)
    share = {}
    for name, dm in (("plain", plain), ("balanced", balanced)):
        dm.setup()
        labels = torch.cat([b["label"] for _ in range(4) for b in dm.train_dataloader()])
        share[name] = (labels == CLASS_INDEX["df"]).float().mean().item()
    assert share["plain"] == pytest.approx(0.1)
    assert 0.35 < share["balanced"] < 0.65


def test_bad_input_is_a_clear_error(ham_dir, tmp_path, small_ham):
    with pytest.raises(DataError, match="does not exist: point HAM10000_DIR"):
        LesionDataModule(data_dir=str(tmp_path / "missing")).setup()
    with pytest.raises(ConfigError, match="not both"):
        LesionDataModule(data_dir=str(ham_dir), csv_path="x.csv")
    with pytest.raises(ConfigError, match="class_weighting 'focal' is unknown"):
        LesionDataModule(class_weighting="focal")
    with pytest.raises(ConfigError, match="sum to less than 1"):
        LesionDataModule(val_fraction=0.5, test_fraction=0.5)
    image = str(next(small_ham[0].glob("*/*.jpg")))
    with pytest.raises(DataError, match=r"class 'df' has only 2 lesion\(s\)"):
        LesionDataModule(csv_path=_clinic_csv(tmp_path, image, ["nv"] * 9 + ["df"] * 2)).setup()
    Path(image).write_bytes(Path(image).read_bytes()[:-50])
    csv = _clinic_csv(tmp_path, image, ["nv"] * 3)
    with pytest.raises(DataError, match=r"3 unreadable images .*truncated JPEG"):
        LesionDataModule(csv_path=csv).setup()
