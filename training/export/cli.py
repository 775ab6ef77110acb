"""``python -m training export``: a trained checkpoint as the next version of a Triton model.

    python -m training export --checkpoint runs/x/checkpoints/best.ckpt \
        [--repository model_repository] [--name skin_lesion] [--parity-images DIR]

Writes ``<repository>/<name>/<version>/model.pt`` (TorchScript: ``uint8 [N, H, W, 3]`` RGB in,
``float32`` probabilities ``[N, 7]`` out), the same model as ``model.onnx`` (``--no-onnx``
leaves it out; docs/export_onnx.md) and ``metadata.json``, plus the model-level
``config.pbtxt`` (NVIDIA Triton, PyTorch backend) and ``labels.txt`` on the first export.
A new export gets the next version number and is not served until promoted
(``python -m serving.versions promote N``); the first export is served at once. A version is
never overwritten: it is built in a private folder and renamed into place under the model's
lock. Eager and TorchScript outputs are compared on real images first, and eager and ONNX
Runtime's; a version that differs by more than 1e-5 (TorchScript) or 1e-4 (ONNX) is not
written.

With the gate (the default; ``--no-gate`` to leave it out) the model has a second output, an
out-of-distribution score per image (``--ood-score``, default knn), and
``metadata.json``'s ``gate`` holds its threshold (at most 1 % of validation images over it)
and the image-quality thresholds, all computed from the checkpoint's recorded split
(``training.export.gate``; up to ``--gate-images`` training images are read for it).

With the explanation (the default; ``--no-cam`` to leave it out) the model has a third output,
``cam__2``: the class activation map of every class on the network's last feature grid
(``training.export.cam``, docs/explain.md), and ``metadata.json``'s ``explain`` says its grid.
A network without one (MobileNetV3) is exported without it, with a warning.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from contracts.errors import ConfigError, DataError
from contracts.metadata import read_metadata
from contracts.repository import served_version
from contracts.tensors import DEFAULT_MODEL_NAME
from training.evaluation import model_card
from training.export.cam import network_explainer
from training.export.checkpoint import load_checkpoint
from training.export.gate import GATE_IMAGES, check_options, gate_for_checkpoint
from training.export.ood import DEFAULT_OOD_SCORE, OOD_SCORES
from training.export.operating_point import validation_thresholds
from training.export.torchscript import parity_clinical
from training.export.torchscript import parity_images as read_parity_images
from training.export.writer import export_model, writable
from training.reference_stats import MAX_IMAGES, reference_for_checkpoint


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """How :func:`export` checks and describes a version; the defaults suit most exports.

    Args:
        parity_images: real images for the parity check (default: REAL_LESIONS_DIR, else
            HAM10000_DIR).
        wandb_run_id: the W&B run that produced the checkpoint, if it does not record one.
        temperature: softmax temperature stored inside the model.
        reference_data: a HAM10000-layout folder for the validation split (thresholds) and
            the drift reference (default: the recorded folder, else HAM10000_DIR).
        reference_images: images read per split for it.
        gate: compute the gate (quality thresholds, the out-of-distribution score output and
            its threshold) from the recorded split; False exports the probabilities alone.
        ood_score: the score kind, one of :data:`training.export.ood.OOD_SCORES`.
        gate_images: training images (seeded, stratified) in the knn bank or the mahalanobis
            Gaussians; the quality thresholds use every training image, the threshold every
            validation image.
        onnx: write ``model.onnx`` beside ``model.pt`` (``training.export.onnx``).
        explain: add the class activation map output ``cam__2`` (``training.export.cam``);
            a network without one gets none, with a warning.
    """

    parity_images: str | Path | None = None
    wandb_run_id: str | None = None
    temperature: float = 1.0
    reference_data: str | Path | None = None
    reference_images: int = MAX_IMAGES
    gate: bool = True
    ood_score: str = DEFAULT_OOD_SCORE
    gate_images: int = GATE_IMAGES
    onnx: bool = True
    explain: bool = True


def export(
    checkpoint: str | Path,
    repository: str | Path = "model_repository",
    name: str = DEFAULT_MODEL_NAME,
    options: ExportOptions | None = None,
) -> Path:
    """Export a LesionClassifier checkpoint as the next version of ``name``; see the module doc.

    ``metadata.json`` gets the referral operating points chosen on the checkpoint's validation
    split (``training.export.operating_point``) and the training data's reference statistics
    for drift monitoring (``training.reference_stats``), both from the recorded split on
    ``options.reference_data`` or the recorded folder or ``HAM10000_DIR``; ``{}`` and ``null``
    with a warning when it cannot be read. From the same split, unless ``options.gate`` is
    False, the gate (``training.export.gate``): the model then also returns the
    out-of-distribution score, and ``metadata.json``'s ``gate`` holds its threshold and the
    image-quality thresholds (``null``, with a warning and no score output, without data).

    Args:
        checkpoint: the ``.ckpt`` file written by ``python -m training fit``.
        repository: the model repository folder.
        name: the model's name in the repository.
        options: parity images, W&B run, temperature, drift reference; defaults when None.

    Returns:
        The new version's folder, e.g. ``model_repository/skin_lesion/3``.
    """
    o = options or ExportOptions()
    if o.gate:
        check_options(o.ood_score, o.gate_images)
    writable(Path(repository))  # fail before the slow part
    loaded = load_checkpoint(checkpoint)
    images = read_parity_images(o.parity_images, loaded.input_size)
    reference = reference_for_checkpoint(
        checkpoint, loaded.classifier, loaded.input_size, o.reference_data, o.reference_images
    )
    thresholds, decision = validation_thresholds(
        checkpoint, loaded.classifier, loaded.input_size, o.temperature, o.reference_data
    )
    gate = None
    if o.gate:
        gate = gate_for_checkpoint(
            checkpoint,
            loaded.classifier,
            loaded.input_size,
            o.reference_data,
            temperature=o.temperature,
            kind=o.ood_score,
            max_images=o.gate_images,
        )
    metadata = dataclasses.replace(
        loaded.metadata,
        name=name,
        temperature=o.temperature,
        thresholds=thresholds,
        decision=decision,
        reference=reference,
        gate=gate.metadata if gate else None,
        wandb_run_id=o.wandb_run_id or loaded.metadata.wandb_run_id,
    )
    return export_model(
        loaded.classifier,
        repository,
        loaded.input_size,
        images,
        metadata,
        gated=gate.model if gate else None,
        onnx=o.onnx,
        explainer=network_explainer(loaded.classifier) if o.explain else None,
        clinical=parity_clinical(o.parity_images, len(images)),
    )


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
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
        "--reference-images", type=int, default=MAX_IMAGES, help="images read per split for it"
    )
    add_gate_arguments(p)
    add_cam_argument(p)
    p.add_argument(
        "--no-onnx",
        dest="onnx",
        action="store_false",
        help="write model.pt alone, without model.onnx (metadata.json's artifacts says so)",
    )
    return p.parse_args(argv)


def add_cam_argument(p: argparse.ArgumentParser) -> None:
    """``--no-cam`` (export and evaluate --export)."""
    p.add_argument(
        "--no-cam",
        dest="explain",
        action="store_false",
        help="export without the class activation map output cam__2 (where the model looked)",
    )


def add_gate_arguments(p: argparse.ArgumentParser) -> None:
    """``--no-gate``, ``--ood-score`` and ``--gate-images`` (export and evaluate --export)."""
    p.add_argument(
        "--no-gate",
        dest="gate",
        action="store_false",
        help="export the probabilities alone: no out-of-distribution score, no gate "
        "thresholds (gate=%(default)s without this flag)",
    )
    p.add_argument(
        "--ood-score",
        choices=OOD_SCORES,
        default=DEFAULT_OOD_SCORE,
        help="the model's out-of-distribution score",
    )
    p.add_argument(
        "--gate-images",
        type=int,
        default=GATE_IMAGES,
        help="training images read for the quality thresholds and the score's Gaussians",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m training export``; exit status 2 on a user-facing error."""
    args = _parse(argv)
    try:
        path = export(
            args.checkpoint,
            args.repository,
            args.name,
            ExportOptions(
                parity_images=args.parity_images,
                wandb_run_id=args.wandb_run_id,
                temperature=args.temperature,
                reference_data=args.reference_data,
                reference_images=args.reference_images,
                gate=args.gate,
                ood_score=args.ood_score,
                gate_images=args.gate_images,
                onnx=args.onnx,
                explain=args.explain,
            ),
        )
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = read_metadata(path)
    model_card.write(None, "cnn", path, meta)  # what metadata.json knows: no evaluation
    served = served_version(path.parent) == meta.version
    ood = (meta.gate or {}).get("ood") or {}
    gate = (
        f"; OOD {ood['score']} threshold {ood['threshold']:.4g} (refuses "
        f"{100 * ood['validation_false_refusal']:.2f} % of {ood['validation_images']} "
        "validation images)"
        if meta.has_ood_output
        else "; no gate"
    )
    onnx = ((meta.parity or {}).get("onnx") or {}).get("max_abs_diff")
    print(
        f"exported {args.name} version {meta.version} to {path} (parity "
        f"{(meta.parity or {})['max_abs_diff']:.2g}"
        + (f", ONNX {onnx:.2g}" if onnx is not None else ", no ONNX")
        + f"{gate}"
        + (f"; CAM {grid[0]}x{grid[1]}" if (grid := meta.cam_grid()) else "; no CAM")
        + "); "
        + (
            "it is served"
            if served
            else f"serve it with `python -m serving.versions promote {meta.version}`"
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
