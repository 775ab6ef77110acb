"""``metadata.json`` of an exported version: the typed schema, its one writer and its readers.

Export writes it once, atomically, before the version folder appears under its number; nothing
patches it afterwards. Readers (the gateway, the version CLI, the evaluation, monitoring) call
:func:`read_metadata` and get a :class:`VersionMetadata`, or :class:`MetadataError` naming the
file and what is wrong. Keys this schema does not know are kept in ``extra`` and written back
unchanged, so an older reader never drops what a newer writer added.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from contracts.clinical import check_compatible
from contracts.decision import DecisionError, DecisionRule
from contracts.images import RESIZE_POLICY
from contracts.labels import CLASSES, NUM_CLASSES
from contracts.quality import QualityThresholds
from contracts.tensors import (
    CAM_DATATYPE,
    CAM_OUTPUT_NAME,
    CLINICAL_DATATYPE,
    CLINICAL_INPUT_NAME,
    INPUT_DATATYPE,
    INPUT_NAME,
    OOD_DATATYPE,
    OOD_OUTPUT_NAME,
    OUTPUT_DATATYPE,
    OUTPUT_NAME,
)
from contracts.triton_config import ARTIFACT_FILES, TORCHSCRIPT_FILE, write_text_atomic

METADATA_FILE = "metadata.json"
REFERRAL_TARGETS: tuple[str, ...] = ("malignant", "mel")
# Derived from ``input_size`` when written; never read back as truth.
_DERIVED = ("inputs", "outputs", "input_format", "resize_policy")


class MetadataError(ValueError):
    """A ``metadata.json`` that is missing, unreadable or does not fit the schema."""


@dataclass
class VersionMetadata:
    """What one exported version says about itself.

    Args:
        name: the Triton model's name (the folder above the version).
        input_size: ``(height, width)`` of the ``uint8`` RGB images the model takes.
        classes: output order; always :data:`contracts.labels.CLASSES`.
        version: the version number, set by the writer when the folder gets its number.
        thresholds: referral operating points per target (``mel``, ``malignant``), each
            ``{"threshold": p, "sensitivity": ..., "specificity": ..., ...}``, chosen on
            validation; empty when none were chosen.
        temperature: the softmax temperature inside the model.
        metrics: the checkpoint's logged metrics (``val/balanced_accuracy``, ...).
        reference: training-data statistics for drift monitoring, or None.
        parity: ``{"max_abs_diff", "tolerance", "images"}`` of eager vs TorchScript.
        artifacts: the model files of the version by kind, ``{"torchscript": "model.pt",
            "onnx": "model.onnx"}`` (:data:`contracts.triton_config.ARTIFACT_FILES`); None
            for versions exported before it was recorded, which have ``model.pt`` alone
            (:meth:`artifact_files`). Every file listed must be in the folder
            (:func:`check_artifacts`).
        onnx: how ``model.onnx`` was made (``exporter``, ``opset``, the ``onnx`` and
            ``onnxruntime`` versions), or None without one.
        gate: what refuses an image that is not a dermoscopic lesion photo, or None (versions
            exported before the gate): ``{"quality": {QualityThresholds fields, "percentiles",
            "images"}, "ood": {"score", "threshold", "target_false_refusal", ...}}``. A version
            with ``gate.ood`` has the second output :data:`contracts.tensors.OOD_OUTPUT_NAME`.
        explain: where the model looked, or None (versions exported before it, or without
            it): ``{"output": "cam__2", "method": "cam", "grid": [h, w], "classes": 7,
            "units": ..., ...}``. A version with it has the output
            :data:`contracts.tensors.CAM_OUTPUT_NAME`, ``float32 [N, 7, h, w]``
            (:meth:`cam_grid`; docs/explain.md).
        clinical: the patient-metadata encoding a fusion version takes as its second input
            :data:`contracts.tensors.CLINICAL_INPUT_NAME` (``contracts.clinical.describe()``:
            ``{"version", "dim", "fields", ...}``), or None for an image-only version. A
            version whose encoding is not this code's is refused where it would be served
            (:meth:`check_clinical`); reading it (listing, rollback) still works.
        decision: which class the version names (``contracts.decision``: the rule and its
            ``tau`` and ``class_priors``, chosen on validation), or None: the plain argmax, as
            every version exported before it (:meth:`decision_rule`).
        extra: every other key (``tta``, ``ensemble``, ``evaluation``, future keys).
    """

    name: str
    input_size: tuple[int, int]
    classes: tuple[str, ...] = CLASSES
    version: int | None = None
    dataset_version: str | None = None
    synthetic: bool | None = None
    model_name: str | None = None
    training_config: dict[str, Any] = field(default_factory=dict)
    class_weights: list[float] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    temperature: float = 1.0
    wandb_run_id: str | None = None
    checkpoint: dict[str, Any] | None = None
    git: dict[str, Any] | None = None
    created_at: str | None = None
    parity: dict[str, Any] | None = None
    torch_version: str | None = None
    torchscript: str | None = None
    artifacts: dict[str, str] | None = None
    onnx: dict[str, Any] | None = None
    reference: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    explain: dict[str, Any] | None = None
    clinical: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def decision_rule(self) -> DecisionRule:
        """The rule that names the class (the plain argmax for a version without one)."""
        return DecisionRule.from_metadata(self.decision, f"{self.name or 'model'} metadata.json")

    @property
    def has_clinical_input(self) -> bool:
        """Whether the model takes the patient metadata as a second input (a fusion version)."""
        return self.clinical is not None

    def clinical_dim(self) -> int | None:
        """The length of the clinical input's rows, or None for an image-only version."""
        return int(self.clinical["dim"]) if self.clinical is not None else None

    def check_clinical(self) -> None:
        """Refuse to serve a version whose clinical encoding is not this code's.

        Raises:
            contracts.clinical.ClinicalEncodingError: naming both encoding versions.
        """
        check_compatible(self.clinical, f"{self.name or 'model'} version {self.version}")

    def input_names(self) -> list[str]:
        """The model's inputs, in the order of its forward arguments."""
        return [INPUT_NAME] + ([CLINICAL_INPUT_NAME] if self.has_clinical_input else [])

    @property
    def has_ood_output(self) -> bool:
        """Whether the model has the out-of-distribution score output (``gate.ood``)."""
        return self.ood_threshold() is not None

    def ood_threshold(self) -> float | None:
        """The score over which an image is refused, or None without the output."""
        ood = (self.gate or {}).get("ood")
        value = ood.get("threshold") if isinstance(ood, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return None

    @property
    def has_cam_output(self) -> bool:
        """Whether the model has the class-activation-map output (``explain``)."""
        return self.cam_grid() is not None

    def cam_grid(self) -> tuple[int, int] | None:
        """``(h, w)`` of the class activation map's grid, or None without the output."""
        explain = self.explain or {}
        grid = explain.get("grid")
        if explain.get("output") != CAM_OUTPUT_NAME or grid is None or not _positive_pair(grid):
            return None
        return int(grid[0]), int(grid[1])

    def quality_thresholds(self) -> QualityThresholds | None:
        """The quality checks' thresholds chosen at export, or None (older versions).

        Raises:
            MetadataError: ``gate.quality`` exists but lacks a threshold.
        """
        quality = (self.gate or {}).get("quality")
        if quality is None:
            return None
        try:
            return QualityThresholds.from_dict(quality)
        except (ValueError, AttributeError) as exc:
            raise MetadataError(
                f"{self.name} version {self.version}: gate.quality: {exc}"
            ) from None

    def artifact_files(self) -> dict[str, str]:
        """``{kind: file name}`` of the version's model files (``model.pt`` alone for versions
        exported before ``artifacts`` was recorded)."""
        return dict(self.artifacts) if self.artifacts else {"torchscript": TORCHSCRIPT_FILE}

    def output_names(self) -> list[str]:
        """The model's outputs, in order (each one's ``__<index>`` is its position in the
        tuple the model returns: :func:`contracts.tensors.output_index`)."""
        return (
            [OUTPUT_NAME]
            + ([OOD_OUTPUT_NAME] if self.has_ood_output else [])
            + ([CAM_OUTPUT_NAME] if self.has_cam_output else [])
        )

    def referral_thresholds(self) -> dict[str, float]:
        """``{target: threshold}`` for the targets with a valid threshold in (0, 1]."""
        found = {}
        for target in REFERRAL_TARGETS:
            entry = self.thresholds.get(target)
            value = entry.get("threshold") if isinstance(entry, dict) else entry
            if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1:
                found[target] = float(value)
        return found

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, with the tensor description derived from ``input_size``."""
        height, width = self.input_size
        out: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "classes": list(self.classes),
            "input_size": [height, width],
            "inputs": [
                {"name": INPUT_NAME, "datatype": INPUT_DATATYPE, "shape": [-1, height, width, 3]}
            ]
            + [
                {"name": CLINICAL_INPUT_NAME, "datatype": CLINICAL_DATATYPE, "shape": [-1, dim]}
                for dim in [self.clinical_dim()]
                if dim is not None
            ],
            "outputs": [
                {"name": OUTPUT_NAME, "datatype": OUTPUT_DATATYPE, "shape": [-1, NUM_CLASSES]}
            ]
            + (
                [{"name": OOD_OUTPUT_NAME, "datatype": OOD_DATATYPE, "shape": [-1, 1]}]
                if self.has_ood_output
                else []
            )
            + [
                {"name": CAM_OUTPUT_NAME, "datatype": CAM_DATATYPE, "shape": [-1, NUM_CLASSES, *g]}
                for g in [self.cam_grid()]
                if g is not None
            ],
            "input_format": "RGB uint8 NHWC, resized with contracts.images.eval_resize",
            "resize_policy": RESIZE_POLICY,
        }
        for f in fields(self):
            if f.name not in out and f.name != "extra":
                out[f.name] = getattr(self, f.name)
        if self.clinical is None:  # an image-only version's metadata.json stays as it was
            del out["clinical"]
        if self.decision is None:  # so does one that names its argmax
            del out["decision"]
        out.update(self.extra)
        result: dict[str, Any] = jsonable(out)
        return result

    @classmethod
    def from_dict(cls, raw: Any, source: str = "metadata.json") -> VersionMetadata:
        """Parse and check a decoded ``metadata.json``.

        Raises:
            MetadataError: not an object, wrong class list, or an unusable ``input_size``.
        """
        if not isinstance(raw, dict):
            raise MetadataError(f"{source} is not a JSON object")
        classes = tuple(raw.get("classes") or CLASSES)
        if classes != CLASSES:
            raise MetadataError(
                f"{source} lists classes {list(classes)}; this code knows {list(CLASSES)} in "
                "that order: the version was exported by an incompatible release"
            )
        size = raw.get("input_size")
        if (
            not isinstance(size, list | tuple)
            or len(size) != 2
            or not all(isinstance(v, int) and v > 0 for v in size)
        ):
            raise MetadataError(f"{source} has no usable input_size (got {size!r})")
        known = {f.name for f in fields(cls)} - {"extra", "input_size", "classes"}
        values = {k: raw[k] for k in known if k in raw and raw[k] is not None}
        for key in ("thresholds", "gate", "artifacts", "onnx", "explain", "clinical", "decision"):
            if not isinstance(values.get(key, {}), dict):
                raise MetadataError(f"{source}: {key} must be an object")
        try:
            DecisionRule.from_metadata(values.get("decision"), source)
        except DecisionError as exc:
            raise MetadataError(str(exc)) from exc
        clinical = values.get("clinical")
        if clinical is not None and not (
            isinstance(clinical.get("dim"), int) and not isinstance(clinical.get("dim"), bool)
        ):
            raise MetadataError(f"{source}: clinical has no integer dim (got {clinical!r})")
        explain = values.get("explain", {})
        if explain.get("output") == CAM_OUTPUT_NAME and not (
            _positive_pair(explain.get("grid")) and explain.get("classes") == NUM_CLASSES
        ):
            raise MetadataError(
                f"{source}: explain names the output {CAM_OUTPUT_NAME!r} but its grid "
                f"{explain.get('grid')!r} is not [h, w] (positive) or its classes "
                f"{explain.get('classes')!r} not {NUM_CLASSES}"
            )
        artifacts = values.get("artifacts", {})
        # A kind this code knows has its own file name; one it does not (a newer writer's) is
        # kept, and must still be a plain file name in the version folder.
        odd = {
            k: v
            for k, v in artifacts.items()
            if ARTIFACT_FILES.get(k, v) != v or not isinstance(v, str) or Path(v).name != v
        }
        if odd or (artifacts and "torchscript" not in artifacts):
            raise MetadataError(
                f"{source}: artifacts {artifacts} must name the model files of this code, "
                f"{ARTIFACT_FILES} (model.pt always), as plain file names"
            )
        extra = {
            k: v
            for k, v in raw.items()
            if k not in known and k not in _DERIVED and k not in ("input_size", "classes")
        }
        return cls(
            input_size=(int(size[0]), int(size[1])),
            classes=classes,
            extra=extra,
            **{"name": raw.get("name", "")} | values,
        )

    def write(self, path: Path) -> None:
        """Write atomically (a reader sees the old file or the new one, never half)."""
        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")


def _positive_pair(value: Any) -> bool:
    """``[a, b]`` of two positive integers (not booleans)."""
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    )


def read_metadata(path: Path) -> VersionMetadata:
    """Read ``path`` (a ``metadata.json`` or the version folder holding one).

    Raises:
        MetadataError: missing, unreadable, not JSON, or not the schema.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METADATA_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise MetadataError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetadataError(f"cannot read {path}: {exc}") from None
    return VersionMetadata.from_dict(raw, str(path))


def check_artifacts(version_dir: Path) -> VersionMetadata:
    """The version's ``metadata.json``, once every model file it lists is in the folder.

    Export checks the folder it is about to place, and the local Triton's rendering and its
    Python backend check the versions they load, so a version missing ``model.onnx`` (or
    ``model.pt``) that its ``metadata.json`` lists is refused, never half served.

    Raises:
        MetadataError: ``metadata.json`` is missing or unreadable, or a listed file is absent
            (the message names it).
    """
    version_dir = Path(version_dir)
    metadata = read_metadata(version_dir)
    files = metadata.artifact_files()
    for kind, name in files.items():
        path = version_dir / name
        if not path.is_file() or path.stat().st_size == 0:
            raise MetadataError(
                f"{path} is missing or empty, but {version_dir / METADATA_FILE} lists the "
                f"artifacts {files}: the {kind} model of version {version_dir.name} is gone. "
                "Export the checkpoint again, or delete the version "
                "(`python -m serving.versions delete N`)"
            )
    return metadata


def jsonable(value: Any) -> Any:
    """Plain JSON types: tuples and arrays (numpy, torch) become lists, numpy scalars numbers,
    NaN and infinities ``None``, anything else unknown its ``str``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy or torch, scalar or array
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
