"""Export into the Triton model repository: a checkpoint (``python -m training export``) or
what the evaluation chose (``python -m training evaluate --export``) as a new version.

Modules by job: ``wrapper`` (the served module), ``ood`` (the gated module: probabilities and
an out-of-distribution score), ``cam`` (the class activation map output ``cam__2`` of each
variant, docs/explain.md), ``gate`` (its threshold and the quality thresholds, from the
recorded split), ``torchscript`` (conversion, parity check), ``onnx`` (the ONNX file beside
it, its ONNX Runtime parity check, the ONNX Runtime config),
``checkpoint`` (reading a checkpoint), ``provenance`` (git state), ``writer`` (the one writer
of a version and its ``metadata.json``), ``cli`` (the command and :func:`export`), and
``variants`` (the evaluation's TTA and ensemble; it imports the evaluation, so it is not
re-exported here).
"""

from training.export.checkpoint import Loaded, checkpoint_metrics, load_checkpoint
from training.export.cli import ExportOptions, export, main
from training.export.gate import GATE_IMAGES, TARGET_FALSE_REFUSAL, Gate, compute_gate
from training.export.onnx import ONNX_TOLERANCE, OnnxRuntimeModel, check_onnx, to_onnx
from training.export.ood import (
    OOD_SCORES,
    SCORE_TOLERANCE,
    FeatureClassifier,
    GatedModel,
    Gaussians,
    choose_threshold,
    fit_gaussians,
    split_classifier,
)
from training.export.provenance import git_state
from training.export.torchscript import (
    PARITY_IMAGES,
    PARITY_TOLERANCE,
    default_parity_dir,
    parity,
    parity_batch,
    parity_images,
    parity_outputs,
    quiet_torchscript,
    to_torchscript,
)
from training.export.wrapper import FirstOutput, LogProbabilities, ProbabilityModel
from training.export.writer import export_model

__all__ = [
    "GATE_IMAGES",
    "ONNX_TOLERANCE",
    "OOD_SCORES",
    "PARITY_IMAGES",
    "PARITY_TOLERANCE",
    "SCORE_TOLERANCE",
    "TARGET_FALSE_REFUSAL",
    "ExportOptions",
    "FeatureClassifier",
    "FirstOutput",
    "Gate",
    "GatedModel",
    "Gaussians",
    "Loaded",
    "LogProbabilities",
    "OnnxRuntimeModel",
    "ProbabilityModel",
    "check_onnx",
    "checkpoint_metrics",
    "choose_threshold",
    "compute_gate",
    "default_parity_dir",
    "export",
    "export_model",
    "fit_gaussians",
    "git_state",
    "load_checkpoint",
    "main",
    "parity",
    "parity_batch",
    "parity_images",
    "parity_outputs",
    "quiet_torchscript",
    "split_classifier",
    "to_onnx",
    "to_torchscript",
]
