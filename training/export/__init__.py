"""Export into the Triton model repository: a checkpoint (``python -m training export``) or
what the evaluation chose (``python -m training evaluate --export``) as a new version.

Modules by job: ``wrapper`` (the served module), ``torchscript`` (conversion, parity check),
``checkpoint`` (reading a checkpoint), ``provenance`` (git state), ``writer`` (the one writer
of a version and its ``metadata.json``), ``cli`` (the command and :func:`export`), and
``variants`` (the evaluation's TTA and ensemble; it imports the evaluation, so it is not
re-exported here).
"""

from training.export.checkpoint import Loaded, checkpoint_metrics, load_checkpoint
from training.export.cli import ExportOptions, export, main
from training.export.provenance import git_state
from training.export.torchscript import (
    PARITY_IMAGES,
    PARITY_TOLERANCE,
    default_parity_dir,
    parity,
    parity_batch,
    parity_images,
    quiet_torchscript,
    to_torchscript,
)
from training.export.wrapper import LogProbabilities, ProbabilityModel
from training.export.writer import export_model

__all__ = [
    "PARITY_IMAGES",
    "PARITY_TOLERANCE",
    "ExportOptions",
    "Loaded",
    "LogProbabilities",
    "ProbabilityModel",
    "checkpoint_metrics",
    "default_parity_dir",
    "export",
    "export_model",
    "git_state",
    "load_checkpoint",
    "main",
    "parity",
    "parity_batch",
    "parity_images",
    "quiet_torchscript",
    "to_torchscript",
]
