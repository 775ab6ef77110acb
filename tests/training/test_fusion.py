"""Training a fusion model: batches carry each row's clinical encoding beside the image, fields
are masked at random while training only, the LightningModule passes the encoding to the
network, and the checkpoint records the encoding it was trained on."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from contracts import clinical
from contracts.errors import ConfigError
from models.fusion import FusionClassifier
from training.augment import eval_transform
from training.datamodule import LesionDataModule, LesionDataset, clinical_rows
from training.export import load_checkpoint
from training.inference import predict
from training.module import LesionClassifier

SIZE = (48, 64)


@pytest.fixture(autouse=True)
def _restore_determinism() -> Iterator[None]:
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.fixture
def frame(small_ham) -> pd.DataFrame:
    from training import data

    root, _ = small_ham
    return data.validate(data.load_ham10000(root), str(root))


def test_samples_carry_their_row_s_encoding_and_evaluation_never_masks(frame):
    dataset = LesionDataset(frame, eval_transform(SIZE))
    for i in (0, len(frame) // 2, len(frame) - 1):
        row = frame.iloc[i]
        np.testing.assert_array_equal(
            dataset[i]["clinical"], clinical.encode(row["age"], row["sex"], row["site"])
        )
    assert clinical_rows(frame).shape == (len(frame), clinical.DIM)
    assert clinical_rows(frame)[:, 1].any()  # HAM10000 rows have ages


def test_training_masks_each_field_independently(frame):
    everything = LesionDataset(frame, eval_transform(SIZE), clinical_dropout=1.0)
    assert not any(everything[i]["clinical"].any() for i in range(len(frame)))
    half = LesionDataset(frame, eval_transform(SIZE), clinical_dropout=0.5)
    full = clinical_rows(frame)
    seen = {name: set() for name in clinical.FIELD_SLICES}
    for _ in range(3):
        for i in range(len(frame)):
            got = half[i]["clinical"]
            for name, part in clinical.FIELD_SLICES.items():
                if full[i][part].any():
                    kept = np.array_equal(got[part], full[i][part])
                    assert kept or not got[part].any()  # all of a field, or none of it
                    seen[name].add(kept)
    # Each field was both kept and masked somewhere, independently of the others.
    assert all(s == {True, False} for s in seen.values())
    assert half.clinical is not None and np.array_equal(half.clinical, full)  # stored rows intact
    with pytest.raises(ConfigError, match="clinical_dropout"):
        LesionDataModule(clinical_dropout=1.5)


def test_a_fusion_model_trains_reads_the_rows_and_records_its_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("HAM10000_DIR", raising=False)  # the synthetic set, with its metadata
    dm = LesionDataModule(
        image_size=SIZE, batch_size=16, num_workers=0, limit_per_class=8, clinical_dropout=0.25
    )
    model = LesionClassifier(image_size=SIZE, warmup_epochs=0.0, clinical=True)
    assert isinstance(model.model, FusionClassifier)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, dm)
    batch = next(iter(dm.val_dataloader()))
    assert batch["clinical"].shape == (len(batch["image"]), clinical.DIM)
    model.eval()
    with torch.no_grad():
        with_rows = model(batch["image"], batch["clinical"])
        unknown = model(batch["image"])
    assert (with_rows - unknown).abs().max() > 1e-5  # the rows reach the network
    path = tmp_path / "fusion.ckpt"
    trainer.save_checkpoint(path)
    raw = torch.load(path, map_location="cpu", weights_only=False)
    assert raw["clinical"] == clinical.describe()
    loaded = load_checkpoint(path)
    assert loaded.metadata.clinical == clinical.describe()
    # The evaluation's pass over a split gives the network each row's own encoding.
    frame = dm.splits["val"].head(12)
    got = predict(loaded.classifier, frame, SIZE, batch_size=5)
    images = torch.stack(
        [torch.from_numpy(dm._eval_loader("val").dataset[i]["image"]) for i in range(12)]
    )
    with torch.no_grad():
        want = loaded.classifier(images, torch.from_numpy(clinical_rows(frame))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # A checkpoint trained on another encoding is refused, naming both.
    raw["clinical"] = {**raw["clinical"], "version": "clinical-v0"}
    torch.save(raw, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError, match=r"'clinical-v0'.*'clinical-v1'"):
        load_checkpoint(tmp_path / "other.ckpt")
