"""Export what the evaluation chose: the calibrated CNN, its TTA, or the ensemble, as one new
version with the temperature, the referral thresholds and the evaluation's figures inside.

This module builds the module and the complete :class:`VersionMetadata`;
:func:`training.export.writer.export_model` writes both, once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch.nn as nn

from contracts.errors import ConfigError
from contracts.metadata import VersionMetadata
from contracts.tensors import DEFAULT_MODEL_NAME
from training.ensemble import Ensemble
from training.evaluation import thresholds as th
from training.evaluation.results import Evaluation
from training.export.torchscript import parity_images as read_parity_images
from training.export.wrapper import LogProbabilities, ProbabilityModel
from training.export.writer import export_model
from training.reference_stats import MAX_IMAGES, reference_for_checkpoint
from training.tta import TTA

EXPORTABLE = ("cnn", "tta", "ensemble")


def _module(ev: Evaluation, which: str) -> tuple[nn.Module, float, dict[str, Any]]:
    """``(logits module for export_model, temperature, extra metadata keys)``."""
    src = ev.source
    if which == "cnn":
        return src.logits, ev.temperature, {}
    if which == "tta":
        tta = TTA(ProbabilityModel(src.logits, ev.temperature), input_size=src.input_size)
        extra = {"tta": {"ops": list(tta.ops), "temperature": ev.temperature}}
        return LogProbabilities(tta), 1.0, extra
    if which == "ensemble":
        if not ev.members:
            raise ConfigError("no ensemble was evaluated: pass --ensemble MODEL ... first")
        members = [ProbabilityModel(m.logits, t) for m, t in ev.members]
        listed = [
            {
                "name": m.name,
                "path": str(m.path),
                "kind": m.kind,
                "model_name": m.metadata.model_name,
                "dataset_version": m.metadata.dataset_version,
                "temperature": t,
            }
            for m, t in ev.members
        ]
        return LogProbabilities(Ensemble(members)), 1.0, {"ensemble": {"members": listed}}
    raise ConfigError(f"cannot export {which!r}: choose one of {', '.join(EXPORTABLE)}")


def _reference(ev: Evaluation, module: nn.Module, max_images: int) -> dict[str, Any] | None:
    """Drift-monitoring reference statistics (``training.reference_stats``) of the exported
    module on the training split; None (with a warning) when the data cannot be reached."""
    src = ev.source
    if src.checkpoint is None:
        return src.metadata.reference  # a version's own, computed when it was exported
    data_dir = ev.settings.get("data_dir")
    return reference_for_checkpoint(src.checkpoint, module, src.input_size, data_dir, max_images)


def variant_metadata(
    ev: Evaluation, which: str, name: str, temperature: float, extra: dict[str, Any]
) -> VersionMetadata:
    """The exported variant's metadata, without ``reference`` (the writer adds provenance).

    ``thresholds`` are those chosen on validation for exactly these outputs; ``evaluation``
    holds the figures on the evaluated split; ``extra`` adds ``tta`` or ``ensemble``.
    """
    src, score = ev.source.metadata, ev.scores[which]
    evaluation = {
        "split": ev.split,
        "dataset_version": ev.settings.get("dataset_version"),
        "variant": score.name,
        "metrics": {k: v for k, v in score.metrics().items() if v == v},  # NaN is not JSON
        "temperature_fitted": ev.temperature,
    }
    return dataclasses.replace(
        src,
        name=name,
        version=None,
        model_name=src.model_name if which == "cnn" else f"{which}({src.model_name})",
        thresholds=th.thresholds_metadata(ev.variants[which].points),
        temperature=temperature,
        extra={**extra, "evaluation": evaluation},
    )


def export_variant(
    ev: Evaluation,
    which: str = "cnn",
    repository: str | Path = "model_repository",
    name: str | None = None,
    parity_images: str | Path | None = None,
    reference_images: int = MAX_IMAGES,
) -> Path:
    """Write ``ev``'s ``which`` (cnn, tta, ensemble) as the next version of ``name``.

    Args:
        ev: the evaluation that scored ``which``.
        which: the variant to export.
        repository: the model repository folder.
        name: the model's name in it (default ``skin_lesion``).
        parity_images: real images for the parity check (default: REAL_LESIONS_DIR, else
            HAM10000_DIR).
        reference_images: images read per split for the drift reference.

    Returns:
        The version folder.
    """
    if which not in ev.variants:
        raise ConfigError(f"{which!r} was not evaluated: add --{which} to the evaluation")
    module, temperature, extra = _module(ev, which)
    metadata = variant_metadata(ev, which, name or DEFAULT_MODEL_NAME, temperature, extra)
    metadata.reference = _reference(ev, module, reference_images)
    images = read_parity_images(parity_images, ev.source.input_size)
    return export_model(module.eval(), repository, ev.source.input_size, images, metadata)
