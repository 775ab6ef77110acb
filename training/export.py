"""Export a trained checkpoint into the Triton model repository as a new version.

    python -m training export --checkpoint runs/x/checkpoints/best.ckpt \
        [--repository model_repository] [--name skin_lesion] [--parity-images DIR]

Writes ``<repository>/<name>/<version>/model.pt`` (TorchScript: ``uint8 [N, H, W, 3]`` RGB in,
``float32`` probabilities ``[N, 7]`` out) and ``metadata.json``, plus the model-level
``config.pbtxt`` (NVIDIA Triton, PyTorch backend) and ``labels.txt`` on the first export.
A new export gets the next version number and is not served until promoted
(``python -m serving.versions promote N``); the first export is served at once. A version is
never overwritten: it is built in a private folder and renamed into place under the model's
lock. Eager and TorchScript outputs are compared on real images first; a version that differs
by more than 1e-5 is not written.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import inspect
import json
import os
import shutil
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from contracts.errors import ConfigError, DataError
from contracts.images import RESIZE_POLICY, eval_resize
from contracts.labels import CLASSES, NUM_CLASSES
from contracts.repository import model_lock, record, served_version, versions
from contracts.tensors import DEFAULT_MODEL_NAME, INPUT_NAME, OUTPUT_NAME
from contracts.triton_config import (
    CONFIG_FILE,
    LABELS_FILE,
    ConfigFileError,
    input_size,
    production_config,
    read_config,
    write_config,
    write_text_atomic,
)
from models.registry import load_strict

PARITY_TOLERANCE = 1e-5
PARITY_IMAGES = 8
TORCHSCRIPT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"
ROOT = Path(__file__).resolve().parents[1]


class ProbabilityModel(nn.Module):
    """``uint8 [N, H, W, 3]`` RGB -> ``float32`` probabilities ``[N, C]``: what Triton serves.

    ``temperature`` (a buffer, 1.0 by default) divides the logits before the softmax; the
    evaluation's calibration sets it, and it travels inside ``model.pt``.
    """

    def __init__(self, classifier: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        self.classifier = classifier
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(image).float()
        return torch.softmax(logits / self.temperature, dim=1)


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Silence torch 2.14's TorchScript deprecation warnings, and nothing else.

    Triton's PyTorch backend loads TorchScript only; see model_repository/README.md for what
    replaces it once the backend loads ``torch.export`` programs.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TORCHSCRIPT_DEPRECATION, category=FutureWarning)
        yield


@dataclass
class Loaded:
    """A checkpoint turned into an exportable classifier plus what metadata.json says of it."""

    classifier: nn.Module
    input_size: tuple[int, int]
    info: dict[str, Any] = field(default_factory=dict)


def load_checkpoint(path: str | Path) -> Loaded:
    """Rebuild ``LesionClassifier`` from a Lightning checkpoint, weights loaded strictly.

    Raises:
        ConfigError: missing or unreadable file, not a LesionClassifier checkpoint, or weights
            that do not fit the network its hyperparameters name.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist: pass the .ckpt file written by fit")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean the same
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
    from training.module import LesionClassifier  # Lightning: imported only when needed

    hparams = dict(ckpt["hyper_parameters"])
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
    size = tuple(int(s) for s in hparams.get("image_size", (112, 150)))
    info = {
        "model_name": hparams.get("model_name"),
        "dataset_version": ckpt.get("dataset_version"),
        "synthetic": ckpt.get("synthetic"),
        "class_weights": ckpt.get("class_weights"),
        "training_config": _jsonable(hparams),
        "metrics": checkpoint_metrics(ckpt),
        "wandb_run_id": ckpt.get("wandb_run_id"),
        "checkpoint": {
            "path": str(path.resolve()),
            "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"),
        },
    }
    _add_run_summary(path, info)
    classes = ckpt.get("classes")
    if classes is not None and list(classes) != list(CLASSES):
        raise ConfigError(
            f"{path} was trained with classes {classes}, this code serves {list(CLASSES)}: "
            "the output order would be wrong"
        )
    return Loaded(module.model.eval(), (size[0], size[1]), info)


def checkpoint_metrics(ckpt: dict[str, Any]) -> dict[str, float]:
    """Validation figures a checkpoint holds: its own ``metrics`` and the monitored best score."""
    metrics = {k: float(v) for k, v in (ckpt.get("metrics") or {}).items()}
    for key, state in (ckpt.get("callbacks") or {}).items():
        if key.startswith("ModelCheckpoint") and isinstance(state, dict):
            monitor, best = state.get("monitor"), state.get("best_model_score")
            if monitor and best is not None:
                metrics.setdefault(monitor, float(best))
    return metrics


def _add_run_summary(path: Path, info: dict[str, Any]) -> None:
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
    if run_dir and not info.get("wandb_run_id"):
        info["wandb_run_id"] = Path(run_dir).name.rsplit("-", 1)[-1]
    for stage in ("val", "test"):
        entry = summary.get(stage) or {}
        # The figures are this checkpoint's only when the summary says they came from it.
        source = summary.get("best_checkpoint") if stage == "val" else entry.get("checkpoint")
        if source and Path(source).resolve() == path.resolve():
            for name, value in (entry.get("metrics") or {}).items():
                if isinstance(value, int | float):
                    info["metrics"].setdefault(f"{stage}/{name}", float(value))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


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
    from contracts.images import index_images, read_image

    paths = sorted(index_images(Path(directory)).values())[:n]
    if not paths:
        raise DataError(
            f"no JPEG/PNG images under {directory} for the parity check: "
            "pass --parity-images DIR with a few real lesion photos"
        )
    return np.stack([eval_resize(read_image(p), size) for p in paths])


def to_torchscript(model: nn.Module, example: torch.Tensor) -> tuple[torch.jit.ScriptModule, str]:
    """Script the model (keeps any control flow); trace it when it is not scriptable."""
    with quiet_torchscript():
        try:
            return torch.jit.script(model), "script"
        except Exception:  # noqa: BLE001 - many timm/torchvision nets only trace
            with torch.no_grad():
                return torch.jit.trace(model, example, check_trace=False), "trace"


def parity(eager: nn.Module, scripted: nn.Module, images: np.ndarray) -> float:
    """Max abs difference of probabilities, on the whole batch and on one image alone."""
    batch = torch.from_numpy(images)
    diff = 0.0
    with torch.no_grad(), quiet_torchscript():
        for x in (batch, batch[:1]):
            diff = max(diff, float((eager(x) - scripted(x)).abs().max()))
    return diff


def git_state() -> dict[str, Any]:
    """The code's commit and whether the working tree had uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


def _writable(repository: Path) -> Path:
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
    """True when a config exists and fits; ConfigError when it exists and does not."""
    try:
        cfg = read_config(model_dir / CONFIG_FILE)
    except ConfigFileError as exc:
        if (model_dir / CONFIG_FILE).exists():
            raise ConfigError(str(exc)) from None
        return False
    if input_size(cfg) != size or list(cfg.output[0].dims) != [NUM_CLASSES]:
        raise ConfigError(
            f"{model_dir / CONFIG_FILE} serves images of {input_size(cfg)} with "
            f"{list(cfg.output[0].dims)} outputs; this model takes {size} and gives "
            f"[{NUM_CLASSES}]: all versions of one Triton model share its tensor shapes, so "
            "export under another --name"
        )
    return True


def export_model(
    classifier: nn.Module,
    repository: str | Path,
    size: tuple[int, int],
    images: np.ndarray,
    name: str = DEFAULT_MODEL_NAME,
    info: dict[str, Any] | None = None,
    temperature: float = 1.0,
    tolerance: float = PARITY_TOLERANCE,
) -> Path:
    """Script ``classifier`` (``uint8 NHWC`` -> logits), check parity, write the next version.

    Args:
        classifier: an ``ImageClassifier`` (preprocessing inside) in eval mode.
        repository: the model repository folder.
        size: ``(height, width)`` the model takes.
        images: real images ``uint8 [N, H, W, 3]`` at ``size`` for the parity check.
        name: the model's name in the repository.
        info: metadata from the checkpoint (see :func:`load_checkpoint`).
        temperature: softmax temperature stored inside the model.
        tolerance: largest accepted eager-vs-TorchScript difference of probabilities.

    Returns:
        The new version's folder.

    Raises:
        ConfigError: parity failure, unwritable repository, incompatible existing config.
    """
    model_dir = _writable(Path(repository)) / name
    model = ProbabilityModel(classifier, temperature).eval()
    if images.shape[1:] != (*size, 3) or images.dtype != np.uint8:
        raise DataError(f"parity images must be uint8 [N, {size[0]}, {size[1]}, 3]")
    scripted, method = to_torchscript(model, torch.from_numpy(images[:2]))
    diff = parity(model, scripted, images)
    if not diff <= tolerance:
        raise ConfigError(
            f"TorchScript and eager outputs differ by {diff:.3g} (> {tolerance:g}) on "
            f"{len(images)} real images: nothing was written. The network has operations "
            "TorchScript changes; make it scriptable or exportable deterministically"
        )
    model_dir.mkdir(exist_ok=True)
    tmp = model_dir / f".tmp-export-{uuid.uuid4().hex}"  # same filesystem: rename is atomic
    tmp.mkdir()
    try:
        scripted.save(str(tmp / "model.pt"))
        metadata = _metadata(name, size, info or {}, temperature, diff, tolerance, len(images))
        metadata["torchscript"] = method
        with model_lock(model_dir):
            has_config = _check_compatible(model_dir, size)
            version = _place(tmp, model_dir, metadata)
            write_text_atomic(model_dir / LABELS_FILE, "\n".join(CLASSES) + "\n")
            if not has_config:
                write_config(
                    model_dir / CONFIG_FILE,
                    production_config(name, size, NUM_CLASSES, version),
                )
                record(model_dir, "first_export", version, None)
            else:
                record(model_dir, "export", version, None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_dir / str(version)


def _place(tmp: Path, model_dir: Path, metadata: dict[str, Any]) -> int:
    """Rename ``tmp`` to the next free version; a taken number (rename fails) means try the next."""
    numbered = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
    version = max([0, *numbered, *versions(model_dir)]) + 1
    while True:
        metadata["version"] = version
        write_text_atomic(tmp / "metadata.json", json.dumps(metadata, indent=2) + "\n")
        try:
            os.rename(tmp, model_dir / str(version))  # fails if that folder holds anything
            return version
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise ConfigError(f"cannot create {model_dir / str(version)}: {exc}") from None
            version += 1


def _metadata(
    name: str,
    size: tuple[int, int],
    info: dict[str, Any],
    temperature: float,
    diff: float,
    tolerance: float,
    n_images: int,
) -> dict[str, Any]:
    height, width = size
    return {
        "name": name,
        "classes": list(CLASSES),
        "input_size": [height, width],
        "inputs": [{"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, height, width, 3]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, NUM_CLASSES]}],
        "input_format": "RGB uint8 NHWC, resized with contracts.images.eval_resize",
        "resize_policy": RESIZE_POLICY,
        "dataset_version": info.get("dataset_version"),
        "synthetic": info.get("synthetic"),
        "model_name": info.get("model_name"),
        "training_config": info.get("training_config", {}),
        "class_weights": info.get("class_weights"),
        "metrics": info.get("metrics", {}),
        # Chosen by the evaluation (training.evaluation.thresholds.thresholds_metadata); until
        # then the gateway falls back to its configured referral threshold.
        "thresholds": info.get("thresholds", {}),
        "temperature": temperature,
        "wandb_run_id": info.get("wandb_run_id"),
        "checkpoint": info.get("checkpoint"),
        "git": git_state(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "parity": {"max_abs_diff": diff, "tolerance": tolerance, "images": n_images},
        "torch_version": torch.__version__,
        "reference": info.get("reference"),  # training.reference_stats, for drift monitoring
    }


def export(
    checkpoint: str | Path,
    repository: str | Path = "model_repository",
    name: str = DEFAULT_MODEL_NAME,
    parity_images: str | Path | None = None,
    wandb_run_id: str | None = None,
    temperature: float = 1.0,
    reference_data: str | Path | None = None,
    reference_images: int = 1000,
) -> Path:
    """Export a LesionClassifier checkpoint as the next version of ``name``; see the module doc.

    ``metadata.json`` gets the training data's reference statistics for drift monitoring
    (``training.reference_stats``), from the recorded split on ``reference_data`` or the
    recorded folder or ``HAM10000_DIR``; ``null`` with a warning when none can be read.

    Returns:
        The new version's folder, e.g. ``model_repository/skin_lesion/3``.
    """
    _writable(Path(repository))  # fail before the slow part
    loaded = load_checkpoint(checkpoint)
    directory = Path(parity_images) if parity_images else default_parity_dir()
    if not directory.is_dir():
        raise ConfigError(f"--parity-images {directory} is not a folder")
    images = parity_batch(directory, loaded.input_size)
    if wandb_run_id:
        loaded.info["wandb_run_id"] = wandb_run_id
    from training.reference_stats import reference_for_checkpoint

    loaded.info["reference"] = reference_for_checkpoint(
        checkpoint, loaded.classifier, loaded.input_size, reference_data, reference_images
    )
    return export_model(
        loaded.classifier,
        repository,
        loaded.input_size,
        images,
        name=name,
        info=loaded.info,
        temperature=temperature,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training export", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="Lightning .ckpt file")
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--name", default=DEFAULT_MODEL_NAME, help="model name in the repository")
    p.add_argument(
        "--parity-images",
        type=Path,
        help="folder of real images (default: REAL_LESIONS_DIR, else HAM10000_DIR)",
    )
    p.add_argument("--wandb-run-id", help="W&B run that produced the checkpoint")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature")
    p.add_argument(
        "--reference-data",
        type=Path,
        help="HAM10000-layout folder for the drift reference (default: the recorded data)",
    )
    p.add_argument(
        "--reference-images", type=int, default=1000, help="images read per split for it"
    )
    args = p.parse_args(argv)
    try:
        path = export(
            args.checkpoint,
            args.repository,
            args.name,
            args.parity_images,
            args.wandb_run_id,
            args.temperature,
            args.reference_data,
            args.reference_images,
        )
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = json.loads((path / "metadata.json").read_text())
    version = meta["version"]
    served = served_version(path.parent) == version
    print(
        f"exported {args.name} version {version} to {path} (parity "
        f"{meta['parity']['max_abs_diff']:.2g}); "
        + (
            "it is served"
            if served
            else f"serve it with `python -m serving.versions promote {version}`"
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
