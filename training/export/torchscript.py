"""TorchScript conversion and the eager-vs-TorchScript parity check on real images."""

from __future__ import annotations

import contextlib
import csv
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from contracts.clinical import encode_rows
from contracts.errors import ConfigError, DataError
from contracts.images import eval_resize, index_images, read_image

PARITY_TOLERANCE = 1e-5
PARITY_IMAGES = 8
TORCHSCRIPT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Silence torch 2.14's TorchScript deprecation warnings, and nothing else.

    Triton's PyTorch backend loads TorchScript only; see model_repository/README.md for what
    replaces it once the backend loads ``torch.export`` programs.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TORCHSCRIPT_DEPRECATION, category=FutureWarning)
        yield


def default_parity_dir() -> Path:
    """Real images for the parity check: REAL_LESIONS_DIR, else HAM10000_DIR."""
    for env in ("REAL_LESIONS_DIR", "HAM10000_DIR"):
        if os.environ.get(env) and Path(os.environ[env]).is_dir():
            return Path(os.environ[env])
    raise ConfigError(
        "no real images for the parity check: pass --parity-images DIR (a folder of JPEG/PNG "
        "lesion photos) or set REAL_LESIONS_DIR or HAM10000_DIR"
    )


def parity_batch(directory: Path, size: tuple[int, int], n: int = PARITY_IMAGES) -> np.ndarray:
    """The first ``n`` images under ``directory`` (sorted), decoded and resized: ``uint8 NHWC``."""
    paths = sorted(index_images(Path(directory)).values())[:n]
    if not paths:
        raise DataError(
            f"no JPEG/PNG images under {directory} for the parity check: "
            "pass --parity-images DIR with a few real lesion photos"
        )
    return np.stack([eval_resize(read_image(p), size) for p in paths])


def parity_images(folder: str | Path | None, size: tuple[int, int]) -> np.ndarray:
    """The parity batch from ``folder``, or from :func:`default_parity_dir` when None.

    Raises:
        ConfigError: no folder given and none configured, or ``folder`` is not a folder.
        DataError: no images in it.
    """
    directory = Path(folder) if folder else default_parity_dir()
    if not directory.is_dir():
        raise ConfigError(f"--parity-images {directory} is not a folder")
    return parity_batch(directory, size)


# Where a folder of parity images may say who each photo is of (age, sex, body site): the real
# lesions' labels.csv, or a HAM10000-layout folder's metadata; matched by image id (file stem).
CLINICAL_TABLES = ("labels.csv", "HAM10000_metadata.csv")


def parity_clinical(folder: str | Path | None, n: int = PARITY_IMAGES) -> np.ndarray:
    """The clinical encoding (``contracts.clinical``) of the parity batch's images: ``float32
    [n', D]``, one row per image :func:`parity_images` reads from ``folder``, in that order.

    The rows are the photos' own (age, sex, body site) where the folder has a table naming
    them (:data:`CLINICAL_TABLES`); an image without a row encodes as unknown, as at serving.
    """
    directory = Path(folder) if folder else default_parity_dir()
    paths = sorted(index_images(directory).values())[:n]
    rows: dict[str, dict[str, str]] = {}
    for name in CLINICAL_TABLES:
        table = directory / name
        if table.is_file():
            with open(table, newline="") as f:
                rows.update({r.get("image_id", ""): r for r in csv.DictReader(f)})
    return encode_rows(rows.get(Path(p).stem, {}) for p in paths)


def to_torchscript(
    model: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...]
) -> tuple[torch.jit.ScriptModule, str]:
    """Script the model (keeps any control flow); trace it when it is not scriptable.

    ``example`` is the image batch, or ``(images, clinical)`` for a fusion model's two inputs.
    """
    with quiet_torchscript():
        try:
            return torch.jit.script(model), "script"
        except Exception:  # noqa: BLE001 - many timm/torchvision nets only trace
            with torch.no_grad():
                return torch.jit.trace(model, example, check_trace=False), "trace"


def _worst(a: float, b: float) -> float:
    """The larger difference, NaN winning (``max`` would drop a NaN second argument)."""
    return a if a != a else (b if b != b or b > a else a)


Outputs = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def served_outputs(out: torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]) -> Outputs:
    """``(probabilities, ood_score or None, cam or None)`` of what a served module returned:
    a tensor, or a tuple by the outputs' ``__<index>`` (an explained model without the gate
    has an empty placeholder at index 1, which is no score)."""
    if not isinstance(out, tuple | list):
        return out, None, None
    score = out[1] if len(out) > 1 and out[1].numel() > 0 else None
    return out[0], score, (out[2] if len(out) > 2 else None)


@dataclass(frozen=True)
class Parity:
    """Eager vs another runtime, worst over the runs: probabilities (max abs difference), the
    OOD score (relative to ``max(1, |eager|)``) and the class activation map (relative to
    ``max(1, max |eager map|)`` of each image), None where the models have no such output."""

    probabilities: float
    score: float | None
    cam: float | None


def parity_report(
    eager: nn.Module, other: nn.Module, images: np.ndarray, clinical: np.ndarray | None = None
) -> Parity:
    """Eager vs ``other`` (TorchScript, ONNX Runtime) on the whole batch and on one image alone.

    ``clinical``: the patient metadata rows of the images (``float32 [N, D]``) for a fusion
    model, passed to both as their second input; None for an image-only model.

    Raises:
        ConfigError: the two differ in which outputs they have, or in a map's shape.
    """
    batch = torch.from_numpy(images)
    rows = torch.from_numpy(np.asarray(clinical, np.float32)) if clinical is not None else None
    diff, score_diff, cam_diff = 0.0, None, None
    with torch.no_grad(), quiet_torchscript():
        for n in (len(batch), 1):
            inputs = (batch[:n],) if rows is None else (batch[:n], rows[:n])
            p_eager, s_eager, c_eager = served_outputs(eager(*inputs))
            p_other, s_other, c_other = served_outputs(other(*inputs))
            diff = _worst(diff, float((p_eager - p_other).abs().max()))
            if (s_eager is None) != (s_other is None) or (c_eager is None) != (c_other is None):
                raise ConfigError("the converted model and the eager one differ in outputs")
            if s_eager is not None and s_other is not None:
                rel = (s_eager - s_other).abs() / s_eager.abs().clamp_min(1.0)
                score_diff = _worst(score_diff or 0.0, float(rel.max()))
            if c_eager is not None and c_other is not None:
                if c_eager.shape != c_other.shape:
                    raise ConfigError(
                        f"the converted model's class activation map is {list(c_other.shape)}, "
                        f"the eager one's {list(c_eager.shape)}"
                    )
                scale = c_eager.flatten(1).abs().max(dim=1).values.clamp_min(1.0)
                rel = (c_eager - c_other).flatten(1).abs().max(dim=1).values / scale
                cam_diff = _worst(cam_diff or 0.0, float(rel.max()))
    return Parity(diff, score_diff, cam_diff)


def parity_outputs(
    eager: nn.Module, scripted: nn.Module, images: np.ndarray
) -> tuple[float, float | None]:
    """Eager vs TorchScript, on the whole batch and on one image alone.

    Returns:
        ``(max abs difference of the probabilities, max relative difference of the OOD score
        or None without one)``; the score's difference is relative to ``max(1, |eager|)``,
        so absolute below 1 (see ``training.export.ood.SCORE_TOLERANCE``). The class
        activation map's: :func:`parity_report`.

    Raises:
        ConfigError: one model has the score output and the other not.
    """
    report = parity_report(eager, scripted, images)
    return report.probabilities, report.score


def parity(eager: nn.Module, scripted: nn.Module, images: np.ndarray) -> float:
    """Max abs difference of probabilities, on the whole batch and on one image alone (the
    first output of a gated model; :func:`parity_outputs` also compares its score)."""
    return parity_outputs(eager, scripted, images)[0]
