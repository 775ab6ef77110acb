"""What the evaluation reads: a model (checkpoint or exported version) and the cases.

A checkpoint gives logits (``LesionClassifier.model``); an exported version gives
probabilities, whose logarithm serves as logits (``softmax(log p) = p``, and temperature
scaling of ``log p`` calibrates on top of whatever temperature the version already has).
The split is rebuilt exactly as in training: the data module's hyperparameters recorded in
the checkpoint (seed, fractions, split kind), on the data at ``HAM10000_DIR`` or given.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from contracts.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class LogProbabilities(nn.Module):
    """``log`` of a probability model's output: exact logits for softmax, temperature and export
    (``training.export.export_model`` applies ``softmax(logits / T)`` to what it wraps)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The floor keeps an exact 0 finite; exp(-69) is below float32's resolution near 1.
        return torch.log(self.model(images).float().clamp_min(1e-30))


@dataclass
class ModelSource:
    """A model to evaluate.

    Attributes:
        name: short name for reports (run name, or ``<model>_v<version>``).
        kind: ``checkpoint`` or ``version``.
        path: the ``.ckpt`` file or the version folder.
        logits: ``uint8 [N, H, W, 3] -> logits [N, 7]`` (log-probabilities for a version).
        classifier: for a checkpoint, the ``ImageClassifier`` export takes; else None.
        input_size: ``(height, width)``.
        info: the checkpoint's description (``training.export.Loaded.info``) or metadata.json.
        datamodule: the data module's recorded hyperparameters ({} when unknown).
        thresholds: ``metadata.json``'s ``thresholds`` of a version ({} otherwise).
    """

    name: str
    kind: str
    path: Path
    logits: nn.Module
    classifier: nn.Module | None
    input_size: tuple[int, int]
    info: dict[str, Any] = field(default_factory=dict)
    datamodule: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)


def datamodule_hparams(ckpt_path: Path | str | None) -> dict[str, Any]:
    """The data module's hyperparameters recorded in a checkpoint ({} when none)."""
    if not ckpt_path or not Path(ckpt_path).is_file():
        return {}
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    return dict(ckpt.get("datamodule_hyper_parameters") or {})


def load_source(path: str | Path) -> ModelSource:
    """A ``.ckpt`` file or an exported version folder (``model_repository/<name>/<version>``).

    Raises:
        ConfigError: neither, or unreadable.
    """
    from training.export import load_checkpoint, quiet_torchscript

    path = Path(path)
    if path.is_file():
        loaded = load_checkpoint(path)
        run = path.parent.parent.name if path.parent.name == "checkpoints" else path.stem
        return ModelSource(
            name=run,
            kind="checkpoint",
            path=path,
            logits=loaded.classifier.eval(),
            classifier=loaded.classifier.eval(),
            input_size=loaded.input_size,
            info=loaded.info,
            datamodule=datamodule_hparams(path),
        )
    if not (path / "model.pt").is_file() or not (path / "metadata.json").is_file():
        raise ConfigError(
            f"{path} is neither a checkpoint file nor an exported version folder (with model.pt "
            "and metadata.json): pass runs/<run>/checkpoints/best.ckpt or "
            "model_repository/<name>/<version>"
        )
    meta = json.loads((path / "metadata.json").read_text())
    with quiet_torchscript():
        model = torch.jit.load(str(path / "model.pt"), map_location="cpu").eval()
    checkpoint = (meta.get("checkpoint") or {}).get("path")
    return ModelSource(
        name=f"{meta.get('name', path.parent.name)}_v{meta.get('version', path.name)}",
        kind="version",
        path=path,
        logits=LogProbabilities(model).eval(),
        classifier=None,
        input_size=tuple(meta["input_size"]),
        info=meta,
        datamodule=datamodule_hparams(checkpoint),
        thresholds=dict(meta.get("thresholds") or {}),
    )


_datamodule_hparams = datamodule_hparams  # the name training.reference_stats imports


@dataclass
class SplitData:
    """The recorded split rebuilt: ``splits`` (train/val/test), and how it was made."""

    splits: dict[str, pd.DataFrame]
    dataset_version: str
    synthetic: bool
    source: str
    settings: dict[str, Any]


def rebuild_split(
    source: ModelSource, data_dir: str | None = None, overrides: dict[str, Any] | None = None
) -> SplitData:
    """The train/val/test split the model was trained with.

    Args:
        source: the model; its recorded data-module hyperparameters are the defaults.
        data_dir: the data folder (default: the recorded one if it exists, else HAM10000_DIR).
        overrides: data-module arguments to use instead (``seed``, ``val_fraction``, ...).
    """
    from training.datamodule import LesionDataModule

    accepted = inspect.signature(LesionDataModule.__init__).parameters
    settings = {k: v for k, v in source.datamodule.items() if k in accepted}
    settings.update({k: v for k, v in (overrides or {}).items() if v is not None})
    recorded = settings.get("data_dir")
    if data_dir:
        settings["data_dir"] = data_dir
    elif recorded and not Path(recorded).is_dir():
        log.warning("recorded data_dir %s is missing here: using HAM10000_DIR", recorded)
        settings["data_dir"] = None
    if settings.get("csv_path") and not Path(settings["csv_path"]).is_file():
        raise DataError(
            f"the model was trained on {settings['csv_path']}, which is missing here: pass "
            "--data-dir (or restore the CSV) to rebuild its split"
        )
    settings.update(image_size=source.input_size, cache_eval=False, num_workers=0)
    if not source.datamodule:
        log.warning("no recorded data-module settings: splitting with the defaults/overrides")
    dm = LesionDataModule(**settings)
    dm.prepare_data()
    dm.setup("test")
    shown = {
        k: v
        for k, v in settings.items()
        if k in ("data_dir", "csv_path", "split", "seed", "val_fraction", "test_fraction")
    }
    shown["data_dir"] = dm.source
    return SplitData(dm.splits, dm.dataset_version, dm.synthetic, dm.source, shown)


def load_cases(path: str | Path) -> pd.DataFrame:
    """An evaluation set of its own: a clinic CSV or a HAM10000-layout folder, validated."""
    from training import data

    path = Path(path)
    frame = data.load_csv(path) if path.suffix.lower() == ".csv" else data.load_ham10000(path)
    return data.validate(frame, str(path))


@torch.no_grad()
def predict(
    model: nn.Module, frame: pd.DataFrame, size: tuple[int, int], batch_size: int = 64
) -> np.ndarray:
    """``model``'s outputs ``[N, 7]`` (float64) on the images of ``frame``, in row order."""
    from torch.utils.data import DataLoader

    from training.augment import eval_transform
    from training.datamodule import LesionDataset, collate
    from training.export import quiet_torchscript

    if frame.empty:
        raise DataError("no images to evaluate: the split is empty")
    dataset = LesionDataset(frame, eval_transform(size))
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    model.eval()
    with quiet_torchscript():
        outputs = [model(batch["image"]).float().numpy() for batch in loader]
    return np.concatenate(outputs).astype(np.float64)
