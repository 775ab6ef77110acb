"""Reference statistics of a model's training data, stored in ``metadata.json`` at export.

The gateway compares its recent predictions with them (``contracts.drift``). Every
feature is a histogram that carries its own bins, so the gateway needs no constant of ours:

- ``body_site`` and ``diagnosis`` (the class priors): the training split's rows.
- ``predicted_class``: the model's argmax on (a sample of) the validation split, the
  counterpart of the gateway's argmax of the model's probabilities (before the rules).
- ``brightness`` and ``contrast``: luminance mean and std of the MODEL INPUT, exactly as the
  gateway records them (``contracts.images.luminance_stats`` after ``eval_resize``), over a
  seeded sample of training images.
- ``image_width`` and ``image_height``: of the original files, before any resize.

Computing it rebuilds the recorded split (``training.recorded_split.rebuild_split``) and
reads at most ``max_images`` images of each split, so it stays cheap on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch.nn as nn

from contracts.drift import histogram
from contracts.images import eval_resize, luminance_stats, read_image
from contracts.labels import BODY_SITES, CLASSES
from training.inference import predict
from training.recorded_split import datamodule_hparams, rebuild_split

log = logging.getLogger(__name__)

MAX_IMAGES = 1000
BRIGHTNESS_EDGES = tuple(float(x) for x in range(0, 257, 16))
CONTRAST_EDGES = (0.0, 5, 10, 15, 20, 25, 30, 35, 40, 50, 60, 80, 128)
SIZE_EDGES = (0.0, 128, 256, 384, 512, 640, 768, 1024, 1536, 2048, 3072, 4096, 8192)


def categorical(values: list[str], categories: tuple[str, ...], source: str) -> dict[str, Any]:
    """Counts of each category (values outside ``categories`` are dropped)."""
    counts = pd.Series(values, dtype=object).value_counts().reindex(categories, fill_value=0)
    return {
        "kind": "categorical",
        "categories": list(categories),
        "counts": [int(c) for c in counts],
        "source": source,
    }


def numeric(values: np.ndarray, edges: tuple[float, ...], source: str) -> dict[str, Any]:
    """A histogram over fixed ``edges`` (values outside fall in the first or last bin)."""
    return {
        "kind": "numeric",
        "edges": [float(e) for e in edges],
        "counts": histogram(values, edges).tolist(),
        "source": source,
        "mean": round(float(np.mean(values)), 3) if len(values) else None,
    }


def image_stats(path: str, input_size: tuple[int, int]) -> tuple[float, float, int, int]:
    """``(brightness, contrast, width, height)`` of an image file, as the gateway records an
    upload of it: luminance of the model input, size of the original."""
    image = read_image(path)
    brightness, contrast = luminance_stats(eval_resize(image, input_size))
    return brightness, contrast, image.shape[1], image.shape[0]


def _sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return frame.sample(n=min(n, len(frame)), random_state=seed) if len(frame) > n else frame


def compute_reference(
    train: pd.DataFrame,
    val: pd.DataFrame,
    model: nn.Module,
    input_size: tuple[int, int],
    max_images: int = MAX_IMAGES,
    seed: int = 0,
) -> dict[str, Any]:
    """The reference of a model trained on ``train`` and validated on ``val``.

    Args:
        train: training rows (``training.data`` columns, ``path`` to readable images).
        val: validation rows.
        model: ``uint8 [N, H, W, 3] -> [N, 7]`` logits or probabilities (argmax is taken).
        input_size: the model's ``(height, width)``.
        max_images: images read per split at most (seeded sample).
        seed: seed of the samples.
    """
    sample = _sample(train, max_images, seed)
    stats = np.array([image_stats(p, input_size) for p in sample["path"]], dtype=np.float64)
    stats = stats.reshape(-1, 4)  # brightness, contrast, width, height
    val_sample = _sample(val, max_images, seed)
    predicted = predict(model, val_sample, input_size).argmax(axis=1)
    source = f"train sample of {len(sample)}"
    features = {
        "body_site": categorical(train["site"].tolist(), BODY_SITES, "train"),
        "diagnosis": categorical(train["label"].tolist(), CLASSES, "train"),
        "predicted_class": categorical(
            [CLASSES[i] for i in predicted], CLASSES, f"val sample of {len(val_sample)}"
        ),
        "brightness": numeric(stats[:, 0], BRIGHTNESS_EDGES, source),
        "contrast": numeric(stats[:, 1], CONTRAST_EDGES, source),
        "image_width": numeric(stats[:, 2], SIZE_EDGES, source),
        "image_height": numeric(stats[:, 3], SIZE_EDGES, source),
    }
    priors = np.array(features["diagnosis"]["counts"], dtype=float)
    reference = {
        "class_priors": dict(
            zip(CLASSES, np.round(priors / max(priors.sum(), 1), 6).tolist(), strict=True)
        ),
        "features": features,
        "images": {"train": len(train), "val": len(val), "sampled": len(sample)},
        "input_size": list(input_size),
    }
    # Content hash: the same data and model give the same version, whatever the time.
    digest = hashlib.sha256(json.dumps(reference, sort_keys=True).encode()).hexdigest()
    reference["version"] = digest[:12]
    reference["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return reference


def data_unreachable(recorded: dict[str, Any], data_dir: str | Path | None) -> str | None:
    """Why the recorded data cannot be read here, or None when it can."""
    if data_dir is not None:
        return None if Path(data_dir).is_dir() else f"reference data {data_dir} is not a folder"
    if recorded.get("csv_path"):
        csv = recorded["csv_path"]
        return None if Path(csv).is_file() else f"the recorded CSV {csv} is missing here"
    candidates = [recorded.get("data_dir"), os.environ.get("HAM10000_DIR")]
    if any(c and Path(c).is_dir() for c in candidates):
        return None
    return "the recorded data folder is missing here and HAM10000_DIR is not set"


def reference_for_checkpoint(
    checkpoint: str | Path,
    classifier: nn.Module,
    input_size: tuple[int, int],
    data_dir: str | Path | None = None,
    max_images: int = MAX_IMAGES,
) -> dict[str, Any] | None:
    """The reference of a checkpoint's model on the split it was trained with, or None.

    The split is rebuilt from the data module's hyperparameters recorded in the checkpoint,
    on ``data_dir`` when given, else the recorded folder, else ``HAM10000_DIR``. Never
    raises: when the data cannot be reached (or the checkpoint records no data module and no
    ``data_dir`` is given) it warns and returns None, and export writes ``reference: null``.
    """

    def give_up(why: str) -> None:
        message = (
            f"metadata.json gets `reference: null` (no drift monitoring for this version): {why}. "
            "Pass --reference-data DIR (a HAM10000-layout folder) or set HAM10000_DIR to store it"
        )
        warnings.warn(message, stacklevel=3)
        log.warning(message)

    if max_images <= 0:
        give_up("--reference-images is 0")
        return None
    recorded = datamodule_hparams(checkpoint)
    if not recorded and data_dir is None:
        give_up(f"{checkpoint} records no data module (not trained by `python -m training fit`)")
        return None
    if why := data_unreachable(recorded, data_dir):
        give_up(why)
        return None
    try:
        split = rebuild_split(recorded, input_size, str(data_dir) if data_dir else None)
        if split.synthetic:
            give_up("the rebuilt split is synthetic data")
            return None
        reference = compute_reference(
            split.splits["train"], split.splits["val"], classifier, input_size, max_images
        )
    except Exception as exc:  # noqa: BLE001 - export must never fail for its reference
        give_up(f"computing it failed ({type(exc).__name__}: {exc})")
        return None
    reference.update(dataset_version=split.dataset_version, data=split.settings)
    return reference
