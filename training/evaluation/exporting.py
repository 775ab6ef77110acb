"""Export what the evaluation chose: the calibrated CNN, its TTA, or the ensemble, as one new
version with the temperature and the referral thresholds inside (``training.export`` writes
it; this module only builds the module and the metadata)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from contracts.errors import ConfigError
from training.evaluation import thresholds as th
from training.evaluation.sources import LogProbabilities

if TYPE_CHECKING:
    from training.evaluate import Evaluation


def _module(ev: Evaluation, which: str) -> tuple[nn.Module, float, dict[str, Any]]:
    """``(logits module for export_model, temperature, extra metadata)``."""
    from training.ensemble import Ensemble
    from training.export import ProbabilityModel
    from training.tta import TTA

    src = ev.source
    if which == "cnn":
        return src.logits, ev.temperature, {}
    if which == "tta":
        tta = TTA(ProbabilityModel(src.logits, ev.temperature), input_size=src.input_size)
        return (
            LogProbabilities(tta),
            1.0,
            {"tta": {"ops": list(tta.ops), "temperature": ev.temperature}},
        )
    if which == "ensemble":
        if not ev.members:
            raise ConfigError("no ensemble was evaluated: pass --ensemble MODEL ... first")
        members = [ProbabilityModel(m.logits, t) for m, t in ev.members]
        listed = [
            {
                "name": m.name,
                "path": str(m.path),
                "kind": m.kind,
                "model_name": m.info.get("model_name"),
                "dataset_version": m.info.get("dataset_version"),
                "temperature": t,
            }
            for m, t in ev.members
        ]
        return LogProbabilities(Ensemble(members)), 1.0, {"ensemble": {"members": listed}}
    raise ConfigError(f"cannot export {which!r}: choose one of cnn, tta, ensemble")


def _reference(ev: Evaluation, module: nn.Module, max_images: int) -> dict[str, Any] | None:
    """Drift-monitoring reference statistics (``training.reference_stats``) of the exported
    module on the training split; None (with a warning) when the data cannot be reached."""
    from training.reference_stats import reference_for_checkpoint

    src = ev.source
    checkpoint = src.path if src.kind == "checkpoint" else (src.info.get("checkpoint") or {})
    if isinstance(checkpoint, dict):
        checkpoint = checkpoint.get("path")
    if checkpoint is None or not Path(checkpoint).is_file():
        return src.info.get("reference")  # a version's own, computed when it was exported
    data_dir = ev.settings.get("data_dir")
    return reference_for_checkpoint(checkpoint, module, src.input_size, data_dir, max_images)


def export_variant(
    ev: Evaluation,
    which: str = "cnn",
    repository: str | Path = "model_repository",
    name: str | None = None,
    parity_images: str | Path | None = None,
    reference_images: int = 1000,
) -> Path:
    """Write ``ev``'s ``which`` as the next version of ``name``; returns the version folder.

    ``metadata.json`` gets ``thresholds`` (chosen on validation for exactly these outputs),
    ``temperature``, and ``evaluation`` (the figures on the evaluated split), plus ``tta`` or
    ``ensemble`` (members) when exported, and ``reference`` (drift monitoring, from at most
    ``reference_images`` images per split).
    """
    from contracts.tensors import DEFAULT_MODEL_NAME
    from contracts.triton_config import write_text_atomic
    from training.export import default_parity_dir, export_model, parity_batch

    if which not in ev.variants:
        raise ConfigError(f"{which!r} was not evaluated: add --{which} to the evaluation")
    module, temperature, extra = _module(ev, which)
    variant, score = ev.variants[which], ev.scores[which]
    info = dict(ev.source.info)
    if which != "cnn":
        info["model_name"] = f"{which}({info.get('model_name')})"
    info["thresholds"] = th.thresholds_metadata(variant.points)
    info["reference"] = _reference(ev, module, reference_images)
    folder = Path(parity_images) if parity_images else default_parity_dir()
    images = parity_batch(folder, ev.source.input_size)
    version = export_model(
        module.eval(),
        repository,
        ev.source.input_size,
        images,
        name=name or DEFAULT_MODEL_NAME,
        info=info,
        temperature=temperature,
    )
    # export_model writes the keys it knows; the evaluation's own go in here, atomically,
    # before anyone can promote the version.
    meta_path = version / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta.update(extra)
    meta["evaluation"] = {
        "split": ev.split,
        "dataset_version": ev.settings.get("dataset_version"),
        "variant": score.name,
        "metrics": {k: v for k, v in score.metrics().items() if v == v},  # NaN is not JSON
        "temperature_fitted": ev.temperature,
    }
    write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    return version
