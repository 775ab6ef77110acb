"""``LesionDataModule``: HAM10000 layout, a clinic's CSV, or synthetic data, as uint8 batches.

Batches are ``{"image": uint8 [N, H, W, 3] RGB, "label": int64 [N], "index": int64 [N],
"clinical": float32 [N, D]}``; ``index`` is the row position in that split's DataFrame
(``dm.splits[name]``), so a misclassified image can be looked up. ``clinical`` is the patient's
age, sex and body site encoded by ``contracts.clinical`` (what a fusion model takes beside the
image; an image-only model ignores it). Scaling and normalisation happen inside the model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import Literal

import cv2
import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler, get_worker_info

from contracts.clinical import FIELD_SLICES, encode_batch
from contracts.errors import ConfigError
from contracts.images import read_image
from contracts.labels import CLASS_INDEX, CLASSES, NUM_CLASSES
from training import data
from training.augment import AugmentOptions, eval_transform, train_transform
from training.synthetic import is_synthetic, make_synthetic

log = logging.getLogger(__name__)


def clinical_rows(df: pd.DataFrame) -> np.ndarray:
    """The ``contracts.clinical`` encoding of each row's age, sex and body site, ``float32
    [N, D]`` (a column the frame lacks is unknown for every row)."""
    none = [None] * len(df)

    def column(name: str) -> list:
        return df[name].tolist() if name in df else none

    return encode_batch(column("age"), column("sex"), column("site"))


class LesionDataset(Dataset):
    """One split's rows as ``{"image", "label", "index", "clinical"}`` samples.

    Args:
        df: rows with ``path`` and ``label`` (see ``training.data.COLUMNS``).
        transform: albumentations pipeline returning ``uint8 [H, W, 3]``.
        cache_size: ``(height, width)`` to keep every transformed image in memory after its
            first read; only for deterministic (evaluation) transforms and ``num_workers=0``
            (a worker's cache would die with the worker).
        clinical_dropout: probability that each field of the clinical encoding (age, sex,
            site, independently) is set to unknown in a sample, so that a fusion model learns
            to answer without it (training only; evaluation uses the real values).
        seed: seed of that masking's own random stream (numpy's, not torch's, so an
            image-only model trains exactly as it did before the fusion models; each
            DataLoader worker reseeds it, :func:`_worker_init`).
    """

    def __init__(
        self,
        df: pd.DataFrame,
        transform,
        cache_size: tuple[int, int] | None = None,
        clinical_dropout: float = 0.0,
        seed: int = 0,
    ):
        self.paths = df["path"].tolist()
        self.labels = np.array([CLASS_INDEX[c] for c in df["label"]], dtype=np.int64)
        self.clinical = clinical_rows(df)
        self.clinical_dropout = float(clinical_dropout)
        self.rng = np.random.default_rng(seed)
        self.transform = transform
        self.cache = np.empty((len(df), *cache_size, 3), np.uint8) if cache_size else None
        self.cached = np.zeros(len(df), dtype=bool)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, np.ndarray | int]:
        if self.cache is not None and self.cached[i]:
            image = self.cache[i]
        else:
            image = self.transform(image=read_image(self.paths[i]))["image"]
            if self.cache is not None:
                self.cache[i], self.cached[i] = image, True
        clinical = self.clinical[i]
        if self.clinical_dropout > 0:
            clinical = clinical.copy()
            masked = self.rng.random(len(FIELD_SLICES)) < self.clinical_dropout
            for part, drop in zip(FIELD_SLICES.values(), masked, strict=True):
                if drop:
                    clinical[part] = 0.0
        return {"image": image, "label": int(self.labels[i]), "index": i, "clinical": clinical}


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack samples into a batch with numpy: torch.stack runs on torch's thread pool, which
    right after cv2 work took 160 ms instead of 1 ms a batch on this loaded 2-core machine."""
    batch = {
        "image": torch.from_numpy(np.stack([s["image"] for s in samples])),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
    }
    if samples and "clinical" in samples[0]:
        batch["clinical"] = torch.from_numpy(np.stack([s["clinical"] for s in samples]))
    return batch


def _worker_init(worker_id: int) -> None:
    # Forked workers inherit one copy of the pipeline's random stream: without a reseed every
    # worker (and every epoch without persistent workers) would repeat the same augmentations.
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(info.seed % 2**32)
    if isinstance(info.dataset, LesionDataset):  # the clinical fields' masking, likewise
        info.dataset.rng = np.random.default_rng(info.seed % 2**32)


class LesionDataModule(L.LightningDataModule):
    """Skin-lesion images, validated, versioned and split by lesion.

    Data source, first match wins: ``csv_path`` (a clinic's CSV, see ``training.data.load_csv``),
    ``data_dir``, the ``HAM10000_DIR`` environment variable (HAM10000 layout), else a small
    synthetic set (``training.synthetic``; ``synthetic`` is then True and ``dataset_version``
    starts with ``synthetic-``).

    After ``setup()``: ``splits`` (``train``, ``val``, ``test`` DataFrames), ``class_weights``
    (float32 [7], from the training split), ``dataset_version``, ``synthetic``, ``image_size``,
    ``source`` and ``skipped`` (rows dropped per problem when ``strict=False``).

    Args:
        data_dir: HAM10000-layout folder (``HAM10000_metadata.csv`` + images anywhere below).
        csv_path: generic CSV with ``path`` and ``label`` columns, instead of ``data_dir``.
        image_size: ``(height, width)`` of the batches.
        batch_size: images per batch.
        num_workers: DataLoader worker processes for training (and evaluation without cache).
        val_fraction: share of lesions for validation.
        test_fraction: share of lesions for testing.
        split: ``grouped`` (stratified by class, grouped by lesion) or ``temporal`` (by date).
        temporal_cutoff: first test date (YYYY-MM-DD) of a temporal split; None picks the date
            that leaves ``test_fraction`` of the lesions after it.
        seed: seed of the split, the training-set cap, the sampler and the augmentations.
        augment: training augmentations (``training.augment.AugmentOptions``).
        class_weighting: ``none``, ``inverse``, ``sqrt_inverse`` or ``effective``.
        balanced_sampler: draw training images class-balanced (with replacement) instead of
            shuffling; usually paired with ``class_weighting="none"``.
        strict: raise on bad rows (missing/unreadable image, unknown label, duplicate id);
            False skips them with a warning.
        verify_decode: also fully decode every image when validating (slower).
        limit_per_class: cap on training images per class (seeded), for quick runs.
        cache_eval: keep resized validation/test images in memory after the first epoch.
        clinical_dropout: probability that each field of a training sample's clinical
            encoding (age, sex, body site, independently) is set to unknown
            (:class:`LesionDataset`); only a fusion model (``model.clinical: true``) reads it.
    """

    def __init__(  # noqa: PLR0913 (LightningCLI's typed config: each parameter is a data.* key)
        self,
        data_dir: str | None = None,
        csv_path: str | None = None,
        image_size: tuple[int, int] = (112, 150),
        batch_size: int = 64,
        num_workers: int = 2,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split: Literal["grouped", "temporal"] = "grouped",
        temporal_cutoff: str | None = None,
        seed: int = 42,
        augment: AugmentOptions | None = None,
        class_weighting: Literal["none", "inverse", "sqrt_inverse", "effective"] = "sqrt_inverse",
        balanced_sampler: bool = False,
        strict: bool = True,
        verify_decode: bool = False,
        limit_per_class: int | None = None,
        cache_eval: bool = True,
        clinical_dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if not 0.0 <= clinical_dropout <= 1.0:
            raise ConfigError(f"clinical_dropout must be in [0, 1], got {clinical_dropout}")
        if data_dir and csv_path:
            raise ConfigError("give data_dir or csv_path, not both")
        if split not in ("grouped", "temporal"):
            raise ConfigError(f"split {split!r} is unknown; use 'grouped' or 'temporal'")
        if class_weighting not in data.WEIGHTINGS:
            raise ConfigError(f"class_weighting {class_weighting!r} is unknown: {data.WEIGHTINGS}")
        data.check_fractions(val_fraction, test_fraction)
        self.save_hyperparameters(ignore=["augment"])
        # Stored as a plain dict so checkpoints load without unpickling project classes.
        if isinstance(augment, dict):  # from a checkpoint's hyperparameters
            augment = AugmentOptions(**augment)
        self.augment = augment or AugmentOptions()
        self.hparams["augment"] = asdict(self.augment)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.splits: dict[str, pd.DataFrame] = {}
        self.class_weights = torch.ones(NUM_CLASSES)
        self.dataset_version = ""
        self.synthetic = False
        self.source = ""
        self.skipped: dict[str, int] = {}
        self._eval_sets: dict[str, LesionDataset] = {}

    def _data_dir(self) -> str | None:
        return self.hparams.data_dir or os.environ.get("HAM10000_DIR") or None

    def prepare_data(self) -> None:
        # Runs once per node before setup: build the synthetic set here, not once per rank.
        if not self.hparams.csv_path and not self._data_dir():
            make_synthetic()

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        # One cv2 thread in this process, before any DataLoader forks: calling setNumThreads
        # in a worker forked after cv2's pool ran deadlocks (seen here), and these small
        # images gain nothing from cv2 threads while the model needs the cores.
        cv2.setNumThreads(1)
        h = self.hparams
        if h.csv_path:
            self.source, df = str(h.csv_path), data.load_csv(h.csv_path)
        elif data_dir := self._data_dir():
            self.source, df = str(data_dir), data.load_ham10000(data_dir)
            self.synthetic = is_synthetic(data_dir)  # the synthetic set named by its path
        else:
            root = make_synthetic()
            self.source, self.synthetic, df = str(root), True, data.load_ham10000(root)
            log.warning("no data configured (HAM10000_DIR unset): training on SYNTHETIC images")
        df = data.validate(df, self.source, strict=h.strict, decode=h.verify_decode)
        self.skipped = dict(df.attrs.get("skipped", {}))
        version = data.dataset_version(df)
        self.dataset_version = f"synthetic-{version}" if self.synthetic else version
        if h.split == "temporal":
            splits = data.temporal_split(df, h.temporal_cutoff, h.val_fraction, h.test_fraction)
        else:
            splits = data.grouped_split(df, h.val_fraction, h.test_fraction, h.seed)
        if h.limit_per_class:
            splits["train"] = data.limit_per_class(splits["train"], h.limit_per_class, h.seed)
        weights = data.class_weights(splits["train"]["label"], h.class_weighting)
        self.splits, self.class_weights = splits, torch.tensor(weights, dtype=torch.float32)
        log.info("data %s, version %s: %s", self.source, self.dataset_version[:16], self.summary())

    def summary(self) -> dict[str, dict[str, int]]:
        """Images per class in each split, e.g. ``{"train": {"akiec": 210, ...}, ...}``."""
        return {
            name: dict(zip(CLASSES, data.class_counts(df["label"]).tolist(), strict=True))
            for name, df in self.splits.items()
        }

    def train_dataloader(self) -> DataLoader:
        h, df = self.hparams, self.splits["train"]
        dataset = LesionDataset(
            df,
            train_transform(self.image_size, self.augment, seed=h.seed),
            clinical_dropout=h.get("clinical_dropout", 0.0),
            seed=h.seed,
        )
        sampler = None
        if h.balanced_sampler:
            per_image = 1.0 / data.class_counts(df["label"])[dataset.labels]
            generator = torch.Generator().manual_seed(h.seed)
            sampler = WeightedRandomSampler(per_image.tolist(), len(df), generator=generator)
        return DataLoader(
            dataset,
            batch_size=h.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=h.num_workers,
            persistent_workers=h.num_workers > 0,
            worker_init_fn=_worker_init,
            collate_fn=collate,
            drop_last=len(df) > h.batch_size,  # a batch of 1 breaks BatchNorm
            pin_memory=torch.cuda.is_available(),
        )

    def _eval_loader(self, name: str) -> DataLoader:
        h = self.hparams
        if name not in self._eval_sets:
            cache = self.image_size if h.cache_eval else None
            transform = eval_transform(self.image_size)
            self._eval_sets[name] = LesionDataset(self.splits[name], transform, cache)
        workers = 0 if h.cache_eval else h.num_workers
        return DataLoader(
            self._eval_sets[name],
            batch_size=h.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            worker_init_fn=_worker_init,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The test split, in row order (``index`` = row of ``splits["test"]``)."""
        return self._eval_loader("test")
