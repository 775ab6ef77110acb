"""The one writer of an exported version: ``model.pt``, ``model.onnx``, ``metadata.json``, and
on the first export of a model its ``config.pbtxt`` and ``labels.txt``.

A version is never overwritten: it is built in a private folder, ``metadata.json`` complete
inside it, and renamed into place under the model's lock. Nothing patches it afterwards.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from contracts.clinical import DIM as CLINICAL_DIM
from contracts.clinical import describe as describe_clinical
from contracts.errors import ConfigError, DataError
from contracts.labels import CLASSES, NUM_CLASSES
from contracts.metadata import METADATA_FILE, MetadataError, VersionMetadata, check_artifacts
from contracts.repository import model_lock, record, versions
from contracts.tensors import DEFAULT_MODEL_NAME
from contracts.triton_config import (
    CONFIG_FILE,
    LABELS_FILE,
    ONNX_FILE,
    TORCHSCRIPT_FILE,
    ConfigFileError,
    allow_any_input_size,
    input_size,
    production_config,
    read_config,
    write_config,
    write_text_atomic,
)
from models.fusion import uses_clinical
from training.export.cam import (
    CAM_TOLERANCE,
    ExplainedProbabilityModel,
    check_map,
    explain_metadata,
    explainer_facts,
)
from training.export.onnx import (
    ONNX_TOLERANCE,
    OnnxRuntimeModel,
    check_onnx,
    onnx_facts,
    to_onnx,
)
from training.export.ood import SCORE_TOLERANCE, ExplainedGatedModel, GatedModel
from training.export.provenance import git_state
from training.export.torchscript import (
    PARITY_TOLERANCE,
    Parity,
    parity_report,
    served_outputs,
    to_torchscript,
)
from training.export.wrapper import ProbabilityModel, served_module

MODEL_FILE = TORCHSCRIPT_FILE


def writable(repository: Path) -> Path:
    """Create the repository folder if needed and prove we can write there (even as root)."""
    try:
        repository.mkdir(parents=True, exist_ok=True)
        probe = repository / f".probe-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"cannot write to the model repository {repository} ({exc.strerror or exc}): "
            "pass a writable --repository or fix its permissions"
        ) from None
    return repository


def _check_compatible(model_dir: Path, size: tuple[int, int]) -> bool:
    """True when a config exists and fits; ConfigError when it exists and does not.

    Versions may differ in input size; a config written before they could (fixed height and
    width) is changed to take any size when a version of another size arrives.
    """
    try:
        cfg = read_config(model_dir / CONFIG_FILE)
    except ConfigFileError as exc:
        if (model_dir / CONFIG_FILE).exists():
            raise ConfigError(str(exc)) from None
        return False
    if list(cfg.output[0].dims) != [NUM_CLASSES]:
        raise ConfigError(
            f"{model_dir / CONFIG_FILE} serves {list(cfg.output[0].dims)} outputs; this model "
            f"gives [{NUM_CLASSES}]: export under another --name"
        )
    if input_size(cfg) not in (None, size) and allow_any_input_size(cfg):
        write_config(model_dir / CONFIG_FILE, cfg)
    return True


def export_model(  # noqa: PLR0913 (gated: the served module of a version with the gate)
    classifier: nn.Module,
    repository: str | Path,
    size: tuple[int, int],
    images: np.ndarray,
    metadata: VersionMetadata | None = None,
    tolerance: float = PARITY_TOLERANCE,
    gated: GatedModel | None = None,
    onnx: bool = True,
    explainer: nn.Module | None = None,
    clinical: np.ndarray | None = None,
) -> Path:
    """Script ``classifier`` (``uint8 NHWC`` -> logits) and convert it to ONNX, check both
    against eager PyTorch, write the next version.

    Args:
        classifier: an ``ImageClassifier`` (preprocessing inside), or any module giving
            logits for ``uint8 [N, H, W, 3]``, in eval mode.
        repository: the model repository folder.
        size: ``(height, width)`` the model takes.
        images: real images ``uint8 [N, H, W, 3]`` at ``size`` for the parity check.
        metadata: what the version says of itself: its model ``name``, ``temperature``
            (stored inside the model), ``thresholds``, the checkpoint's facts and any
            ``extra`` keys (default: nothing but the name ``skin_lesion``). Export fills in
            ``version``, ``parity``, ``git``, ``created_at``, ``torch_version``,
            ``torchscript``, ``artifacts`` and ``onnx``.
        tolerance: largest accepted eager-vs-TorchScript difference of probabilities
            (eager vs ONNX Runtime: :data:`ONNX_TOLERANCE`).
        gated: the module to serve instead of ``ProbabilityModel(classifier, temperature)``
            when the version has the out-of-distribution output (``metadata.gate.ood``): the
            :class:`GatedModel` its threshold was chosen with (``training.export.gate``). Its
            score must match TorchScript's within :data:`SCORE_TOLERANCE` (relative).
        onnx: also write ``model.onnx`` (:mod:`training.export.onnx`); False writes
            ``model.pt`` alone, and ``metadata.json``'s ``artifacts`` says so.
        explainer: ``uint8 -> (logits, cam)`` (``training.export.cam``: ``CamLogits`` of
            ``classifier``'s network, ``CamTTA``, ``CamEnsemble``) whose logits are
            ``classifier``'s: the version then also returns the class activation map
            ``cam__2`` (``ExplainedProbabilityModel``, or ``ExplainedGatedModel`` of
            ``gated``) and ``metadata.json`` gets ``explain`` (set here, from the map's grid;
            None without an explainer, whatever ``metadata`` said). Before anything is
            converted, the explained module's probabilities (and score) must be the plain
            one's within ``tolerance`` (and :data:`SCORE_TOLERANCE`) on ``images``, and its
            map must average to its logits (``training.export.cam.check_map``); the map must
            match TorchScript's and ONNX Runtime's within :data:`CAM_TOLERANCE` (relative to
            each image's map scale).
        clinical: the patient metadata rows of ``images`` (``contracts.clinical``, ``float32
            [N, D]``), required when ``classifier`` fuses them (``models.fusion``): the
            version then takes them as its second input ``clinical__1`` (model.pt, model.onnx
            and config.pbtxt), ``metadata.json`` records the encoding under ``clinical``, and
            every parity check runs on the images with their own rows.

    Returns:
        The new version's folder.

    Raises:
        ConfigError: parity failure (TorchScript or ONNX), a module no exporter converts to
            ONNX, an ONNX file whose inputs or outputs are not the version's, unwritable
            repository, incompatible existing config,
            ``metadata`` for another input size, or ``gated`` and ``metadata.gate.ood`` not
            given together (or at another temperature).
    """
    metadata = metadata or VersionMetadata(DEFAULT_MODEL_NAME, size)
    if tuple(metadata.input_size) != tuple(size):
        raise ConfigError(f"metadata describes {metadata.input_size} images, the model {size}")
    if (gated is not None) != metadata.has_ood_output:
        raise ConfigError(
            "a gated model needs gate.ood (with its threshold) in the metadata, and gate.ood a "
            f"gated model: got {'a' if gated is not None else 'no'} gated model and "
            f"{'a' if metadata.has_ood_output else 'no'} gate.ood threshold"
        )
    as_buffer = float(torch.tensor(float(metadata.temperature)))  # float32, as in the model
    if gated is not None and float(gated.temperature) != as_buffer:
        raise ConfigError(
            f"the gated model's temperature {float(gated.temperature)} is not the metadata's "
            f"{metadata.temperature}"
        )
    model_dir = writable(Path(repository)) / metadata.name
    plain = gated if gated is not None else ProbabilityModel(classifier, metadata.temperature)
    plain.eval()
    if images.shape[1:] != (*size, 3) or images.dtype != np.uint8:
        raise DataError(f"parity images must be uint8 [N, {size[0]}, {size[1]}, 3]")
    fusion = uses_clinical(plain)
    rows = _clinical_rows(fusion, clinical, len(images))
    model, explain = plain, None
    if explainer is not None:
        model, explain = _explained(plain, explainer.eval(), images, tolerance, rows)
    metadata = dataclasses.replace(
        metadata, explain=explain, clinical=describe_clinical() if fusion else None
    )
    grid = metadata.cam_grid()
    example = torch.from_numpy(images[:2])
    examples = (example,) if rows is None else (example, torch.from_numpy(rows[:2]))
    scripted, method = to_torchscript(served_module(model, fusion), examples)
    found = parity_report(model, scripted, images, rows)
    why = _parity_failure(found, tolerance, "")
    if why is not None:
        raise ConfigError(
            f"TorchScript and eager outputs differ {why} on "
            f"{len(images)} real images: nothing was written. The network has operations "
            "TorchScript changes; make it scriptable or exportable deterministically"
        )
    checked: dict[str, Any] = {
        "max_abs_diff": found.probabilities,
        "tolerance": tolerance,
        "images": len(images),
        **_secondary(found),
    }
    artifacts = {"torchscript": MODEL_FILE}
    onnx_bytes, facts = None, None
    if onnx:
        onnx_bytes, exporter = to_onnx(
            model,
            example,
            metadata.output_names(),
            clinical=None if rows is None else torch.from_numpy(rows[:2]),
        )
        checked["onnx"] = _onnx_parity(
            model, onnx_bytes, images, size, metadata.output_names(), grid, rows
        )
        artifacts["onnx"] = ONNX_FILE
        facts = onnx_facts(exporter)
    metadata = dataclasses.replace(
        metadata,
        git=git_state(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        parity=checked,
        torch_version=torch.__version__,
        torchscript=method,
        artifacts=artifacts,
        onnx=facts,
    )
    model_dir.mkdir(exist_ok=True)
    tmp = model_dir / f".tmp-export-{uuid.uuid4().hex}"  # same filesystem: rename is atomic
    tmp.mkdir()
    try:
        scripted.save(str(tmp / MODEL_FILE))
        if onnx_bytes is not None:
            (tmp / ONNX_FILE).write_bytes(onnx_bytes)
            check_onnx(  # as written
                tmp / ONNX_FILE, size, metadata.output_names(), grid, metadata.clinical_dim()
            )
        with model_lock(model_dir):
            has_config = _check_compatible(model_dir, size)
            version = place_version(tmp, model_dir, metadata)
            write_text_atomic(model_dir / LABELS_FILE, "\n".join(CLASSES) + "\n")
            if not has_config:
                config = production_config(
                    metadata.name,
                    size,
                    NUM_CLASSES,
                    version,
                    outputs=metadata.output_names(),
                    clinical_dim=metadata.clinical_dim(),
                )
                write_config(model_dir / CONFIG_FILE, config)
                record(model_dir, "first_export", version, None)
            else:
                record(model_dir, "export", version, None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_dir / str(version)


def _clinical_rows(fusion: bool, clinical: np.ndarray | None, n: int) -> np.ndarray | None:
    """The parity images' clinical rows as ``float32 [n, D]`` for a fusion model, else None.

    Raises:
        ConfigError: a fusion model without rows, or rows of another shape.
    """
    if not fusion:
        return None
    if clinical is None:
        raise ConfigError(
            "the model fuses the clinical metadata: export needs the parity images' own rows "
            "(age, sex, body site; training.export.torchscript.parity_clinical)"
        )
    rows = np.ascontiguousarray(clinical, np.float32)
    if rows.shape != (n, CLINICAL_DIM):
        raise DataError(f"clinical rows are {list(rows.shape)}, not [{n}, {CLINICAL_DIM}]")
    return rows


def _explained(
    plain: nn.Module,
    explainer: nn.Module,
    images: np.ndarray,
    tolerance: float,
    clinical: np.ndarray | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """``plain`` (``ProbabilityModel`` or ``GatedModel``) with the class activation map, and
    ``metadata.json``'s ``explain`` for it, once it serves what ``plain`` does (see
    :func:`export_model`'s ``explainer``).

    Raises:
        ConfigError: another output than ``plain``'s, or a map that is not its network's.
    """
    model: nn.Module = (
        ExplainedGatedModel(plain, explainer)
        if isinstance(plain, GatedModel)
        else ExplainedProbabilityModel(explainer, float(plain.temperature))
    ).eval()
    x = torch.from_numpy(images)
    rows = None if clinical is None else torch.from_numpy(clinical)
    with torch.no_grad():
        p_plain, s_plain, _ = served_outputs(plain(x, rows))
        p_model, s_model, cam = served_outputs(model(x, rows))
    diff = float((p_plain - p_model).abs().max())
    score = (
        float(((s_plain - s_model).abs() / s_plain.abs().clamp_min(1.0)).max())
        if s_plain is not None and s_model is not None
        else None
    )
    if (
        cam is None
        or cam.shape[:2] != (len(images), p_plain.shape[1])
        or not diff <= tolerance
        or (s_plain is None) != (s_model is None)
        or (score is not None and not score <= SCORE_TOLERANCE)
    ):
        raise ConfigError(
            f"the model with the class activation map serves other outputs than without it "
            f"(probabilities by {diff:.3g}, score by {score}, map "
            f"{None if cam is None else list(cam.shape)}): nothing was written. Its explainer "
            "must be built from the same network and temperature; or export with --no-cam"
        )
    check_map(explainer, x, cam, rows)
    grid = (int(cam.shape[2]), int(cam.shape[3]))
    return model, explain_metadata(grid, explainer_facts(explainer))


def _parity_failure(found: Parity, tolerance: float, probabilities: str) -> str | None:
    """How the outputs differ beyond the tolerances (probabilities ``tolerance``, absolute,
    said as ``probabilities`` before "by"), or None when they do not."""
    if not found.probabilities <= tolerance:
        return f"{probabilities}by {found.probabilities:.3g} (max abs, > {tolerance:g})"
    if found.score is not None and not found.score <= SCORE_TOLERANCE:
        return f"in the OOD score by {found.score:.3g} (relative, > {SCORE_TOLERANCE:g})"
    if found.cam is not None and not found.cam <= CAM_TOLERANCE:
        return (
            f"in the class activation map by {found.cam:.3g} (relative to the map's scale, "
            f"> {CAM_TOLERANCE:g})"
        )
    return None


def _secondary(found: Parity) -> dict[str, Any]:
    """``parity``'s entries for the score and the map, where the model has them."""
    out: dict[str, Any] = {}
    if found.score is not None:
        out.update(ood_max_rel_diff=found.score, ood_tolerance=SCORE_TOLERANCE)
    if found.cam is not None:
        out.update(cam_max_rel_diff=found.cam, cam_tolerance=CAM_TOLERANCE)
    return out


def _onnx_parity(  # noqa: PLR0913 (the version's facts the ONNX file is checked against)
    model: nn.Module,
    onnx_bytes: bytes,
    images: np.ndarray,
    size: tuple[int, int],
    outputs: list[str],
    cam_grid: tuple[int, int] | None = None,
    clinical: np.ndarray | None = None,
) -> dict[str, Any]:
    """Eager vs ONNX Runtime on the real images (the whole batch and one image alone), after
    checking the ONNX model's inputs and outputs; ``parity.onnx`` of ``metadata.json``.

    Raises:
        ConfigError: another signature, or a difference over the tolerances, naming
            ``model.onnx``: nothing is written.
    """
    dim = None if clinical is None else clinical.shape[1]
    runtime = OnnxRuntimeModel(check_onnx(onnx_bytes, size, outputs, cam_grid, dim))
    found = parity_report(model, runtime, images, clinical)
    why = _parity_failure(found, ONNX_TOLERANCE, "in the probabilities ")
    if why is not None:
        raise ConfigError(
            f"{ONNX_FILE} run by ONNX Runtime and the eager model differ {why} on "
            f"{len(images)} real images: nothing was written. The network has operations the "
            "ONNX export changes; fix them, or export with --no-onnx (model.pt alone)"
        )
    return {"max_abs_diff": found.probabilities, "tolerance": ONNX_TOLERANCE, **_secondary(found)}


def place_version(tmp: Path, model_dir: Path, metadata: VersionMetadata) -> int:
    """Rename ``tmp`` to the next free version; a taken number (rename fails) means try the next.

    ``metadata.json`` is written inside ``tmp`` with the number it is about to get, and every
    model file it lists checked there (:func:`contracts.metadata.check_artifacts`), so the
    version appears complete or not at all.
    """
    numbered = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
    version = max([0, *numbered, *versions(model_dir)]) + 1
    while True:
        metadata.version = version
        metadata.write(tmp / METADATA_FILE)
        try:
            check_artifacts(tmp)
        except MetadataError as exc:
            raise ConfigError(f"{exc}: nothing was written") from None
        try:
            os.rename(tmp, model_dir / str(version))  # fails if that folder holds anything
            return version
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise ConfigError(f"cannot create {model_dir / str(version)}: {exc}") from None
            version += 1
