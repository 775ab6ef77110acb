"""What the evaluation reads: a model (checkpoint or exported version) and the cases.

A checkpoint gives logits (``LesionClassifier.model``); an exported version gives
probabilities, whose logarithm serves as logits (``softmax(log p) = p``, and temperature
scaling of ``log p`` calibrates on top of whatever temperature the version already has).
The split comes from ``training.recorded_split``: the one the model was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn

from contracts.clinical import ClinicalEncodingError
from contracts.errors import ConfigError
from contracts.metadata import METADATA_FILE, MetadataError, VersionMetadata, read_metadata
from training import data
from training.export.checkpoint import load_checkpoint
from training.export.torchscript import quiet_torchscript
from training.export.wrapper import ExportedVersion, FirstOutput, LogProbabilities
from training.export.writer import MODEL_FILE
from training.recorded_split import datamodule_hparams


@dataclass
class ModelSource:
    """A model to evaluate.

    Attributes:
        name: short name for reports (run name, or ``<model>_v<version>``).
        kind: ``checkpoint`` or ``version``.
        path: the ``.ckpt`` file or the version folder.
        logits: ``uint8 [N, H, W, 3] -> logits [N, 7]`` (log-probabilities for a version).
        metadata: the checkpoint's facts (``training.export.Loaded.metadata``) or the
            version's ``metadata.json``.
        datamodule: the data module's recorded hyperparameters ({} when unknown).
    """

    name: str
    kind: str
    path: Path
    logits: nn.Module
    metadata: VersionMetadata
    datamodule: dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.metadata.input_size

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint the model came from, when it exists here."""
        found = self.path if self.kind == "checkpoint" else (self.metadata.checkpoint or {})
        if isinstance(found, dict):
            found = found.get("path")
        return Path(found) if found and Path(found).is_file() else None


def load_source(path: str | Path) -> ModelSource:
    """A ``.ckpt`` file or an exported version folder (``model_repository/<name>/<version>``).

    Raises:
        ConfigError: neither, or unreadable.
    """
    path = Path(path)
    if path.is_file():
        loaded = load_checkpoint(path)
        run = path.parent.parent.name if path.parent.name == "checkpoints" else path.stem
        return ModelSource(
            name=run,
            kind="checkpoint",
            path=path,
            logits=loaded.classifier.eval(),
            metadata=loaded.metadata,
            datamodule=datamodule_hparams(path),
        )
    if not (path / MODEL_FILE).is_file() or not (path / METADATA_FILE).is_file():
        raise ConfigError(
            f"{path} is neither a checkpoint file nor an exported version folder (with model.pt "
            "and metadata.json): pass runs/<run>/checkpoints/best.ckpt or "
            "model_repository/<name>/<version>"
        )
    try:
        meta = read_metadata(path)
        meta.check_clinical()  # a fusion version of another encoding would read other numbers
    except (MetadataError, ClinicalEncodingError) as exc:
        raise ConfigError(str(exc)) from None
    with quiet_torchscript():
        scripted = torch.jit.load(str(path / MODEL_FILE), map_location="cpu").eval()
    # (image, clinical=None) as every module here takes; the clinical rows reach a fusion one.
    model: nn.Module = ExportedVersion(scripted, meta.clinical_dim()).eval()
    if meta.has_ood_output:  # a gated version also returns its out-of-distribution score
        model = FirstOutput(model).eval()
    checkpoint = (meta.checkpoint or {}).get("path")
    return ModelSource(
        name=f"{meta.name or path.parent.name}_v{meta.version or path.name}",
        kind="version",
        path=path,
        logits=LogProbabilities(model).eval(),
        metadata=meta,
        datamodule=datamodule_hparams(checkpoint),
    )


def load_cases(path: str | Path) -> pd.DataFrame:
    """An evaluation set of its own: a clinic CSV or a HAM10000-layout folder, validated."""
    path = Path(path)
    frame = data.load_csv(path) if path.suffix.lower() == ".csv" else data.load_ham10000(path)
    return data.validate(frame, str(path))
