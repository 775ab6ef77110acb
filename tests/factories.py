"""Small real models for tests: a checkpoint fitted for a few steps and its exported version.

Not useful classifiers: they exist so that export, Triton and the gateway can be tested with a
real model in seconds.
"""

from __future__ import annotations

import csv
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from contracts.errors import DataError
from contracts.images import eval_resize, index_images, read_image
from contracts.labels import CLASSES, NUM_CLASSES
from contracts.tensors import DEFAULT_MODEL_NAME
from training.export import ExportOptions, export
from training.module import LesionClassifier


def smoke_checkpoint(  # noqa: PLR0913 (keyword-only options of a test factory)
    path: str | Path,
    images: np.ndarray,
    labels: Sequence[int],
    *,
    model_name: str = "compact_cnn",
    steps: int = 2,
    dataset_version: str | None = None,
    clinical: np.ndarray | None = None,
) -> Path:
    """A small real checkpoint: ``LesionClassifier`` fitted for ``steps`` steps by a Lightning
    Trainer on ``images`` (``uint8 [N, H, W, 3]``, their size is the model's), for tests, demos
    and benchmarks of the export and serving path. Not a useful classifier. Seeded: the same
    arguments give the same weights. With ``clinical`` (the images' ``contracts.clinical``
    rows, ``float32 [N, D]``) it is a fusion model (``model.clinical: true``) trained on them.
    """
    L.seed_everything(0, verbose=False)
    size = (int(images.shape[1]), int(images.shape[2]))
    module = LesionClassifier(
        model_name=model_name, image_size=size, warmup_epochs=0.0, clinical=clinical is not None
    )
    module.dataset_version, module.synthetic = dataset_version, False
    rows = [
        {"image": torch.from_numpy(img), "label": torch.tensor(int(y)), "index": torch.tensor(i)}
        for i, (img, y) in enumerate(zip(images, labels, strict=True))
    ]
    if clinical is not None:
        for row, encoded in zip(rows, clinical, strict=True):
            row["clinical"] = torch.from_numpy(np.asarray(encoded, np.float32))
    batch = max(1, len(rows) // steps)
    loader = torch.utils.data.DataLoader(rows, batch_size=batch)
    folder = Path(path).parent
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=steps,
        accelerator="cpu",
        logger=False,
        callbacks=[ModelCheckpoint(folder, monitor="val/balanced_accuracy", mode="max")],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=folder,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few-image run: Lightning warns about workers, sizes
        trainer.fit(module, loader, loader)
    trainer.save_checkpoint(path)
    return Path(path)


# Training images a smoke export's gate reads: enough for every class, a second at most.
SMOKE_GATE_IMAGES = 32
METADATA_FILES = ("HAM10000_metadata.csv", "labels.csv")


def ham_layout(
    folder: str | Path, images_dir: str | Path, lesions_per_class: int | None = None
) -> Path:
    """A HAM10000-layout folder (``HAM10000_metadata.csv`` + links to the images) of the images
    under ``images_dir``: the rows of its own HAM10000_metadata.csv or labels.csv (the first
    ``lesions_per_class`` lesions of each class by lesion id, all when None), else every image
    labelled by its position (``CLASSES[i % 7]``, one lesion each). Export rebuilds a split on
    it (``ExportOptions(reference_data=...)``) for the referral thresholds, the drift
    reference and the gate of a smoke checkpoint, which records no data module.

    Raises:
        DataError: no images under ``images_dir``.
    """
    source, out = Path(images_dir), Path(folder)
    index = index_images(source)
    if not index:
        raise DataError(f"no JPEG/PNG images under {images_dir}")
    found = [source / n for n in METADATA_FILES if (source / n).is_file()]
    if found:
        with open(found[0], newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["image_id"] in index]
    else:
        rows = [
            {"image_id": stem, "dx": CLASSES[i % NUM_CLASSES], "lesion_id": stem}
            for i, stem in enumerate(sorted(index))
        ]
    if lesions_per_class is not None:
        keep = set()
        for dx in CLASSES:
            lesions = sorted({r["lesion_id"] for r in rows if r["dx"] == dx})
            keep.update(lesions[:lesions_per_class])
        rows = [r for r in rows if r["lesion_id"] in keep]
    (out / "images").mkdir(parents=True, exist_ok=True)
    columns = ["image_id", "dx", "lesion_id"] + [
        c for c in ("localization", "age", "sex", "dx_type") if rows and c in rows[0]
    ]
    with open(out / "HAM10000_metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        target = Path(index[r["image_id"]])
        link = out / "images" / target.name
        if not link.exists():
            os.symlink(target.resolve(), link)
    return out


def smoke_repository(
    repository: str | Path,
    images_dir: str | Path,
    size: tuple[int, int] = (48, 64),
    n_images: int = 8,
    name: str = DEFAULT_MODEL_NAME,
    gate: bool = True,
) -> Path:
    """Train a smoke checkpoint on the first ``n_images`` of ``images_dir`` and export it into
    ``repository``: a real model for other parts' tests (a Triton to talk to) in one call.

    With ``gate`` (the default, as ``python -m training export``) the version has the
    out-of-distribution output and ``gate`` in its metadata.json, computed as export does on a
    split of ``images_dir`` (:func:`ham_layout`; the 28 real lesions: 14 training, 7
    validation images) from at most :data:`SMOKE_GATE_IMAGES` training images: about 2.5 s
    more. Thresholds fitted on so few images refuse some real lesion photos (the OOD threshold
    is the largest of 7 validation scores, the quality bounds about the extremes of 14 photos;
    13 of 417 uploads of the 28 photos in tests/reliability's promotion test): a test that
    expects every real photo diagnosed passes ``gate=False`` (the probabilities alone, as
    versions exported before the gate).

    Returns:
        The exported version's folder.
    """
    paths = sorted(index_images(Path(images_dir)).values())[:n_images]
    if not paths:
        raise DataError(f"no JPEG/PNG images under {images_dir}")
    images = np.stack([eval_resize(read_image(p), size) for p in paths])
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = smoke_checkpoint(
            Path(tmp) / "smoke.ckpt", images, [i % NUM_CLASSES for i in range(len(paths))]
        )
        options = ExportOptions(
            parity_images=images_dir,
            gate=gate,
            gate_images=SMOKE_GATE_IMAGES,
            reference_data=ham_layout(Path(tmp) / "data", images_dir) if gate else None,
        )
        return export(ckpt, repository, name, options)


def fusion_version(real_lesions_dir: Path, repository: Path, size: tuple[int, int]) -> Any:
    """An untrained, seeded fusion network (compact CNN; its clinical branch moves the logits)
    and its exported version in ``repository`` (no gate, no map): ``(eager model, version
    folder)``, the eager model a ``ProbabilityModel`` taking ``(images, clinical)``."""
    from models import create_classifier
    from training.export import ProbabilityModel, export_model
    from training.export.torchscript import parity_batch, parity_clinical

    torch.manual_seed(0)
    model = create_classifier("compact_cnn", clinical=True).eval()
    images = parity_batch(real_lesions_dir, size)
    version = export_model(
        model, repository, size, images, clinical=parity_clinical(real_lesions_dir, len(images))
    )
    return ProbabilityModel(model).eval(), version
