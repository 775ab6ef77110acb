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

from contracts.decision import ARGMAX, DecisionRule
from contracts.errors import ConfigError, DataError
from contracts.metadata import VersionMetadata
from contracts.tensors import DEFAULT_MODEL_NAME
from models.cam import CamClassifier, CamUnsupported
from training.ensemble import Ensemble
from training.evaluation import thresholds as th
from training.evaluation.results import Evaluation
from training.export.cam import CamEnsemble, CamTTA, network_explainer, no_cam
from training.export.checkpoint import load_checkpoint
from training.export.gate import GATE_IMAGES, Gate, check_options, compute_gate, no_gate
from training.export.ood import DEFAULT_OOD_SCORE
from training.export.torchscript import parity_clinical
from training.export.torchscript import parity_images as read_parity_images
from training.export.wrapper import LogProbabilities, ProbabilityModel
from training.export.writer import export_model
from training.recorded_split import rebuild_split
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
        after = ev.variants["tta"].temperature if "tta" in ev.variants else 1.0
        extra = {
            "tta": {
                "ops": list(tta.ops),
                "temperature": ev.temperature,
                "temperature_after_averaging": after,
            }
        }
        return LogProbabilities(tta), after, extra
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


def _explainer(ev: Evaluation, which: str, extra: dict[str, Any]) -> nn.Module | None:
    """``uint8 -> (logits, cam)`` of the exported variant (``training.export.cam``), its logits
    those :func:`_module` serves (``extra``: its metadata keys, the TTA's ops); None, with a
    warning, where there is no class activation map (a network without one, an exported
    version as the source or a member, an ensemble whose members' grids differ)."""
    src = ev.source
    if which == "cnn":
        return network_explainer(src.logits)
    try:
        if which == "tta":
            ops = extra["tta"]["ops"]
            return CamTTA(CamClassifier(src.logits), ev.temperature, ops, src.input_size)
        if which == "ensemble":
            members = [CamClassifier(m.logits) for m, _ in ev.members]
            return CamEnsemble(members, [t for _, t in ev.members], src.input_size)
    except CamUnsupported as exc:
        return no_cam(str(exc))
    raise ConfigError(f"cannot export {which!r}: choose one of {', '.join(EXPORTABLE)}")


def _reference(ev: Evaluation, module: nn.Module, max_images: int) -> dict[str, Any] | None:
    """Drift-monitoring reference statistics (``training.reference_stats``) of the exported
    module on the training split; None (with a warning) when the data cannot be reached."""
    src = ev.source
    if src.checkpoint is None:
        return src.metadata.reference  # a version's own, computed when it was exported
    data_dir = ev.settings.get("data_dir")
    return reference_for_checkpoint(src.checkpoint, module, src.input_size, data_dir, max_images)


def _gate(
    ev: Evaluation, which: str, module: nn.Module, temperature: float, kind: str, max_images: int
) -> Gate | None:
    """The gate (``training.export.gate``) of the exported variant: its threshold chosen on
    the validation cases the evaluation chose the referral thresholds on, the Gaussians and
    quality thresholds from the training split of the same recorded split; None (with a
    warning) without a checkpoint to take the network from, or on synthetic data.

    The score comes from the checkpoint's network (split at its last linear layer); for TTA,
    an ensemble or an exported version, the served probabilities stay the variant's own.
    """
    src = ev.source
    if src.kind == "checkpoint":
        network = src.logits
    elif src.checkpoint is not None:
        network = load_checkpoint(src.checkpoint).classifier
    else:
        return no_gate(f"{src.path} names no checkpoint found here to take the network from")
    served = None if which == "cnn" and src.kind == "checkpoint" else module
    data_dir = ev.settings.get("data_dir")
    overrides = {k: ev.settings.get(k) for k in ("seed", "val_fraction", "test_fraction")}
    try:
        split = rebuild_split(
            src.datamodule,
            src.input_size,
            data_dir if data_dir and Path(data_dir).is_dir() else None,
            overrides,
        )
        if split.synthetic:
            return no_gate("the evaluated split is synthetic (a gate fitted on it refuses photos)")
        return compute_gate(
            split.splits["train"],
            ev.val_cases.frame,
            network,
            src.input_size,
            temperature=temperature,
            kind=kind,
            max_images=max_images,
            served=served,
        )
    except DataError as exc:
        return no_gate(str(exc))


def _decision_metadata(rule: DecisionRule | None) -> dict[str, Any] | None:
    """``metadata.json``'s ``decision``: None (the argmax, as before the rule existed) unless
    validation chose a prior correction."""
    return None if rule is None or rule.rule == ARGMAX else rule.to_metadata()


def variant_metadata(
    ev: Evaluation, which: str, name: str, temperature: float, extra: dict[str, Any]
) -> VersionMetadata:
    """The exported variant's metadata, without ``reference`` (the writer adds provenance).

    ``thresholds`` and ``decision`` are those chosen on validation for exactly these outputs;
    ``evaluation``
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
        decision=_decision_metadata(ev.variants[which].decision),
        temperature=temperature,
        extra={**extra, "evaluation": evaluation},
    )


def export_variant(  # noqa: PLR0913 (the evaluate command's export options)
    ev: Evaluation,
    which: str = "cnn",
    repository: str | Path = "model_repository",
    name: str | None = None,
    parity_images: str | Path | None = None,
    reference_images: int = MAX_IMAGES,
    gate: bool = True,
    ood_score: str = DEFAULT_OOD_SCORE,
    gate_images: int = GATE_IMAGES,
    onnx: bool = True,
    explain: bool = True,
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
        gate: add the gate (out-of-distribution score output, quality thresholds), as
            ``python -m training export`` does; False exports the probabilities alone.
        ood_score: the score kind (``training.export.ood.OOD_SCORES``).
        gate_images: training images read for the gate.
        onnx: write ``model.onnx`` beside ``model.pt`` (TTA, ensembles and the gate's score
            all convert; ``training.export.onnx``).
        explain: add the class activation map output ``cam__2`` (``training.export.cam``: the
            network's; TTA's views' maps mapped back and averaged; the ensemble members'
            averaged when their grids match); None where the variant has none, with a warning.

    Returns:
        The version folder.
    """
    if which not in ev.variants:
        raise ConfigError(f"{which!r} was not evaluated: add --{which} to the evaluation")
    if gate:
        check_options(ood_score, gate_images)
    module, temperature, extra = _module(ev, which)
    metadata = variant_metadata(ev, which, name or DEFAULT_MODEL_NAME, temperature, extra)
    metadata.reference = _reference(ev, module, reference_images)
    images = read_parity_images(parity_images, ev.source.input_size)
    computed = _gate(ev, which, module, temperature, ood_score, gate_images) if gate else None
    metadata.gate = computed.metadata if computed else None
    return export_model(
        module.eval(),
        repository,
        ev.source.input_size,
        images,
        metadata,
        gated=computed.model if computed else None,
        onnx=onnx,
        explainer=_explainer(ev, which, extra) if explain else None,
        clinical=parity_clinical(parity_images, len(images)),
    )
