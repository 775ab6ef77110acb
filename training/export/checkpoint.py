"""A Lightning checkpoint read back as an exportable classifier plus what it says of itself.

Besides the weights and hyperparameters, the facts ``metadata.json`` records come from the
checkpoint (``dataset_version``, ``class_weights``, ``synthetic``, the monitored score) and
from the run's ``summary.json`` that ``python -m training fit`` writes beside it.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from contracts.clinical import ClinicalEncodingError, check_compatible
from contracts.clinical import describe as describe_clinical
from contracts.errors import ConfigError
from contracts.labels import CLASSES
from contracts.metadata import VersionMetadata, jsonable
from contracts.tensors import DEFAULT_MODEL_NAME
from models.registry import load_strict
from training.module import LesionClassifier

# LesionClassifier's own default; checkpoints written before image_size was recorded use it.
DEFAULT_IMAGE_SIZE = (112, 150)


@dataclass
class Loaded:
    """A checkpoint turned into an exportable classifier plus what ``metadata.json`` says of it.

    Attributes:
        classifier: the ``ImageClassifier`` (``uint8 NHWC`` -> logits), in eval mode.
        metadata: the checkpoint's facts, named :data:`DEFAULT_MODEL_NAME` until exported.
    """

    classifier: nn.Module
    metadata: VersionMetadata

    @property
    def input_size(self) -> tuple[int, int]:
        return self.metadata.input_size


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist: pass the .ckpt file written by fit")
    try:
        # A blind catch on purpose: torch.load documents no error type for a bad file, and
        # corrupt ones raise RuntimeError, UnpicklingError, EOFError, KeyError, IndexError,
        # UnicodeDecodeError, ...; every one means "not a readable checkpoint".
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (see above)
        raise ConfigError(
            f"{path} cannot be read as a PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}): pass a .ckpt written by "
            "`python -m training fit`"
        ) from None
    if not isinstance(ckpt, dict) or not {"state_dict", "hyper_parameters"} <= ckpt.keys():
        raise ConfigError(
            f"{path} is not a Lightning checkpoint of LesionClassifier (it has no state_dict and "
            "hyper_parameters): pass a .ckpt written by `python -m training fit`"
        )
    classes = ckpt.get("classes")
    if classes is not None and list(classes) != list(CLASSES):
        raise ConfigError(
            f"{path} was trained with classes {classes}, this code serves {list(CLASSES)}: "
            "the output order would be wrong"
        )
    return ckpt


def load_checkpoint(path: str | Path) -> Loaded:
    """Rebuild ``LesionClassifier`` from a Lightning checkpoint, weights loaded strictly.

    Raises:
        ConfigError: missing or unreadable file, not a LesionClassifier checkpoint, weights
            that do not fit the network its hyperparameters name, or a fusion model trained on
            another clinical encoding than this code's (``contracts.clinical``).
    """
    path = Path(path)
    ckpt = _read(path)
    hparams = dict(ckpt["hyper_parameters"])
    clinical = ckpt.get("clinical")
    if hparams.get("clinical") and clinical is None:
        clinical = describe_clinical()  # a fusion checkpoint from before the encoding was saved
    try:
        check_compatible(clinical, f"checkpoint {path}")
    except ClinicalEncodingError as exc:
        raise ConfigError(str(exc)) from None
    accepted = inspect.signature(LesionClassifier.__init__).parameters
    # The checkpoint holds every weight: do not read the ImageNet or weights_path files again.
    kwargs = {k: v for k, v in hparams.items() if k in accepted}
    kwargs.update(pretrained=False, weights_path=None)
    module = LesionClassifier(**kwargs)
    load_strict(
        module,
        ckpt["state_dict"],
        source=f"checkpoint {path}",
        hint=f"Its weights are not those of model_name={hparams.get('model_name')!r} as this "
        "code builds it: export with the code version that trained it, or retrain",
    )
    height, width = (int(s) for s in hparams.get("image_size", DEFAULT_IMAGE_SIZE))
    metadata = VersionMetadata(
        name=DEFAULT_MODEL_NAME,
        input_size=(height, width),
        model_name=hparams.get("model_name"),
        dataset_version=ckpt.get("dataset_version"),
        synthetic=ckpt.get("synthetic"),
        class_weights=ckpt.get("class_weights"),
        training_config=jsonable(hparams),
        metrics=checkpoint_metrics(ckpt),
        wandb_run_id=ckpt.get("wandb_run_id"),
        clinical=clinical,
        checkpoint={
            "path": str(path.resolve()),
            "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"),
        },
    )
    add_run_summary(path, metadata)
    return Loaded(module.model.eval(), metadata)


def checkpoint_metrics(ckpt: dict[str, Any]) -> dict[str, float]:
    """Validation figures a checkpoint holds: its own ``metrics`` and the monitored best score."""
    metrics = {k: float(v) for k, v in (ckpt.get("metrics") or {}).items()}
    for key, state in (ckpt.get("callbacks") or {}).items():
        if key.startswith("ModelCheckpoint") and isinstance(state, dict):
            monitor, best = state.get("monitor"), state.get("best_model_score")
            if monitor and best is not None:
                metrics.setdefault(monitor, float(best))
    return metrics


def add_run_summary(path: Path, metadata: VersionMetadata) -> None:
    """Take the W&B run id and this checkpoint's figures from the run's ``summary.json``.

    ``python -m training fit`` writes ``runs/<name>/summary.json`` (training.callbacks.RunSummary)
    beside ``runs/<name>/checkpoints/``; the W&B run folder's name ends in the run id.
    """
    summary_file = path.resolve().parent.parent / "summary.json"
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, json.JSONDecodeError):
        return
    run_dir = summary.get("wandb_run_dir")
    if run_dir and not metadata.wandb_run_id:
        metadata.wandb_run_id = Path(run_dir).name.rsplit("-", 1)[-1]
    for stage in ("val", "test"):
        entry = summary.get(stage) or {}
        # The figures are this checkpoint's only when the summary says they came from it.
        source = summary.get("best_checkpoint") if stage == "val" else entry.get("checkpoint")
        if source and Path(source).resolve() == path.resolve():
            for name, value in (entry.get("metrics") or {}).items():
                if isinstance(value, int | float):
                    metadata.metrics.setdefault(f"{stage}/{name}", float(value))
