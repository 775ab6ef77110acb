"""Small real models for tests: a checkpoint fitted for a few steps and its exported version.

Not useful classifiers: they exist so that export, Triton and the gateway can be tested with a
real model in seconds.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from contracts.errors import DataError
from contracts.images import eval_resize, index_images, read_image
from contracts.labels import NUM_CLASSES
from contracts.tensors import DEFAULT_MODEL_NAME
from training.export import ExportOptions, export
from training.module import LesionClassifier


def smoke_checkpoint(
    path: str | Path,
    images: np.ndarray,
    labels: Sequence[int],
    *,
    model_name: str = "compact_cnn",
    steps: int = 2,
    dataset_version: str | None = None,
) -> Path:
    """A small real checkpoint: ``LesionClassifier`` fitted for ``steps`` steps by a Lightning
    Trainer on ``images`` (``uint8 [N, H, W, 3]``, their size is the model's), for tests, demos
    and benchmarks of the export and serving path. Not a useful classifier. Seeded: the same
    arguments give the same weights.
    """
    L.seed_everything(0, verbose=False)
    size = (int(images.shape[1]), int(images.shape[2]))
    module = LesionClassifier(model_name=model_name, image_size=size, warmup_epochs=0.0)
    module.dataset_version, module.synthetic = dataset_version, False
    rows = [
        {"image": torch.from_numpy(img), "label": torch.tensor(int(y)), "index": torch.tensor(i)}
        for i, (img, y) in enumerate(zip(images, labels, strict=True))
    ]
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


def smoke_repository(
    repository: str | Path,
    images_dir: str | Path,
    size: tuple[int, int] = (48, 64),
    n_images: int = 8,
    name: str = DEFAULT_MODEL_NAME,
) -> Path:
    """Train a smoke checkpoint on the first ``n_images`` of ``images_dir`` and export it into
    ``repository``: a real model for other parts' tests (a Triton to talk to) in one call.

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
        return export(ckpt, repository, name, ExportOptions(parity_images=images_dir))
