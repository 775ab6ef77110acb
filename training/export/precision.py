"""Reduced-precision copies of an exported version for CPUs with bfloat16 units (AMX, AVX-512
bf16) or int8 ones (VNNI), behind an accuracy gate; the fp32 files stay in the version as the
reference. On a CPU without bfloat16 units ``model.bf16.pt`` runs slower than fp32 (oneDNN
emulates it): :func:`bf16_units` tells, the command and the Triton backend warn.

    python -m training.export.precision --repository model_repository --version 3 \
        --precision bf16|int8 [--calibration 200] [--checkpoint CKPT] [--data-dir DIR]

writes the next version of the model: the source version's files unchanged (``model.pt``,
``model.onnx``, the model card) plus the reduced-precision model, and ``metadata.json`` with
that file under ``artifacts`` and the accuracy check under ``precision``. Like an export, the
new version is not served until promoted (``python -m serving.versions promote N``); the local
Triton runs the reduced file with ``python -m serving.triton --runtime torchscript_bf16`` (or
``onnx_int8``), the fp32 files with ``torchscript``/``onnx`` as before.

- ``bf16``: ``model.bf16.pt``, the frozen TorchScript graph of ``model.pt`` with every
  convolution in bfloat16 (oneDNN runs them on AMX) but the first :data:`KEEP_FIRST` (for
  EfficientNet-Lite: the stem, which reads the normalised pixels, and the first block's
  depthwise and pointwise convolutions, on the largest maps) and the last (the class
  activation map); the values stay bfloat16 through the ReLU6 and residual additions between
  them and go back to float32 before the pooling, the classifier, the softmax and the
  out-of-distribution score. The first convolutions are where bfloat16 moves the argmax: on
  make run's model, test-split agreement with fp32 was 98.79 % with the stem alone in fp32,
  99.17 % with the first three, 99.70 % with six; the speed-up over frozen fp32 TorchScript
  (batch 32, one thread, the idle CPU) 1.53x, 1.53x and 1.22x; all but the depthwise
  convolutions reduced: 99.24 % at 1.12x (docs/benchmarks.md, "Reduced precision"). The
  bfloat16 convolutions are then oneDNN's fused ones, each with its ReLU6
  (:func:`fuse_convolutions`): the same outputs, 1.74x frozen fp32 instead of 1.47x in the same
  run; the file runs on the CPU only.
- ``int8``: ``model.int8.onnx``, ONNX Runtime's static quantisation of ``model.onnx`` (QDQ,
  per-channel int8 weights, uint8 activations, MinMax calibration on ``--calibration``
  training images of the checkpoint's split, stratified and seeded); the convolutions and
  their ReLU6 are quantised, the rest (score, classifier) stays float32.

The gate: on every image of the checkpoint's VALIDATION split (read and resized as the
evaluation does), the reduced model against the fp32 one (``model.pt`` frozen, the same
input): top-1 agreement at least :data:`MIN_AGREEMENT` and balanced accuracy at most
:data:`MAX_BA_DROP` below the fp32 one's, else nothing is written and the message says by how
much it missed. ``metadata.json``'s ``precision`` records the figures (agreement, both balanced
accuracies, the largest probability difference, the out-of-distribution score's largest
relative difference and how many gate decisions changed).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contracts.errors import ConfigError, DataError
from contracts.images import eval_resize, read_image
from contracts.labels import CLASS_INDEX
from contracts.metadata import METADATA_FILE, MetadataError, check_artifacts
from contracts.repository import model_lock, record
from contracts.tensors import CLINICAL_INPUT_NAME, INPUT_NAME, OOD_OUTPUT_NAME, OUTPUT_NAME
from contracts.triton_config import ONNX_FILE, TORCHSCRIPT_FILE
from training.export.writer import place_version

# precision -> (artifact kind, the runtime of the local Triton that serves it; file name)
PRECISIONS: dict[str, tuple[str, str]] = {
    "bf16": ("torchscript_bf16", "model.bf16.pt"),
    "int8": ("onnx_int8", "model.int8.onnx"),
}
# Convolutions left in float32 at the start of the network (module doc: the measured choice).
KEEP_FIRST = 3
MIN_AGREEMENT = 0.99  # top-1 agreement with the fp32 model on the validation split
MAX_BA_DROP = 0.005  # balanced accuracy at most this much below the fp32 model's
CALIBRATION_IMAGES = 200
BATCH = 64
_BF16, _F32 = 15, 6  # torch's ScalarType numbers in TorchScript graphs
# Operations that keep bfloat16 flowing between two reduced convolutions (the ReLU6, the
# residual addition): their result is bfloat16 when every tensor they read is.
_PASS_THROUGH = frozenset(
    {"aten::hardtanh", "aten::hardtanh_", "aten::relu", "aten::relu_", "aten::add", "aten::clamp"}
)

Outputs = tuple[np.ndarray, np.ndarray | None]  # probabilities [N, 7], score [N] or None
Runner = Callable[[np.ndarray], Outputs]


# --- the CPU they run on -------------------------------------------------------------------

# What ``model.bf16.pt`` ran at, against frozen fp32 ``model.pt`` (batch 32, one thread), on a
# CPU without bfloat16 units (docs/benchmarks.md, "Reduced precision": the Intel Xeon of
# 2026-12-03, AVX-512 and VNNI but neither AMX nor AVX-512 bf16).
EMULATED_BF16_SPEED = 0.58


def bf16_units() -> list[str]:
    """The bfloat16 units of this CPU that oneDNN runs ``model.bf16.pt``'s convolutions on:
    ``"AMX"`` and/or ``"AVX-512 bf16"``. Empty: oneDNN emulates bfloat16 with float32
    instructions and the file runs slower than the fp32 one it was made from
    (:data:`EMULATED_BF16_SPEED`); the accuracy gate still applies to what it computes."""
    try:
        amx = bool(torch.cpu._is_amx_tile_supported())
        avx512 = bool(torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # torch's private probes moved: read the kernel's flags instead
        try:
            lines = Path("/proc/cpuinfo").read_text().splitlines()
        except OSError:
            return []
        flags = next((line for line in lines if line.startswith("flags")), "").split()
        amx, avx512 = "amx_bf16" in flags, "avx512_bf16" in flags
    return [name for name, has in (("AMX", amx), ("AVX-512 bf16", avx512)) if has]


def bf16_speed_warning(units: Sequence[str]) -> str | None:
    """What to tell an operator about ``model.bf16.pt`` on a CPU with these bf16 units."""
    if units:
        return None
    return (
        "this CPU has neither AMX nor AVX-512 bf16: oneDNN emulates bfloat16 here and "
        f"model.bf16.pt runs at about {EMULATED_BF16_SPEED}x the fp32 model.pt "
        "(docs/benchmarks.md); serve the fp32 version here (--runtime onnx or torchscript), "
        "and model.bf16.pt on a CPU with AMX or AVX-512 bf16"
    )


# --- the reduced models -------------------------------------------------------------------


def _frozen(model_pt: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        return torch.jit.freeze(torch.jit.load(str(model_pt), map_location="cpu").eval())


def _cast(graph: Any, value: Any, dtype: int, before: Any) -> Any:
    graph.setInsertPoint(before)
    args = [graph.insertConstant(v) for v in (dtype, False, False, None)]
    node = graph.create("aten::to", [value, *args])
    node.output().setType(value.type())
    graph.insertNode(node)
    return node.output()


def bf16_torchscript(
    model_pt: Path, keep_first: int = KEEP_FIRST, keep_last: int = 1, fuse: bool = True
) -> Any:
    """The frozen ``model_pt`` with its convolutions in bfloat16 but the first ``keep_first``
    and the last ``keep_last`` (module doc); the inputs and outputs are the same tensors. With
    ``fuse``, the bfloat16 convolutions are oneDNN's fused ones (:func:`fuse_convolutions`).

    Raises:
        ConfigError: the graph has no convolution to reduce.
    """
    model = _frozen(model_pt)
    graph = model.graph
    convs = [n for n in graph.nodes() if n.kind() == "aten::_convolution"]
    reduced = convs[keep_first : len(convs) - keep_last]
    if not reduced:
        raise ConfigError(f"{model_pt} has {len(convs)} convolutions: none to run in bfloat16")
    chosen, bf16 = set(reduced), set()  # nodes; names of values that are bfloat16
    for node in list(graph.nodes()):
        if node in chosen:
            x, weight, bias = node.inputsAt(0), node.inputsAt(1), node.inputsAt(2)
            graph.setInsertPoint(node)
            node.replaceInput(1, graph.insertConstant(weight.toIValue().to(torch.bfloat16)))
            if bias.toIValue() is not None:
                node.replaceInput(2, graph.insertConstant(bias.toIValue().to(torch.bfloat16)))
            if x.debugName() not in bf16:
                node.replaceInput(0, _cast(graph, x, _BF16, node))
            bf16.add(node.output().debugName())
            continue
        tensors = [v for v in node.inputs() if isinstance(v.type(), torch._C.TensorType)]
        if node.kind() in _PASS_THROUGH and tensors and all(v.debugName() in bf16 for v in tensors):
            bf16.update(o.debugName() for o in node.outputs())
            continue
        for i, value in enumerate(list(node.inputs())):
            if value.debugName() in bf16:  # anything else reads float32
                node.replaceInput(i, _cast(graph, value, _F32, node))
    torch._C._jit_pass_lint(graph)
    torch._C._jit_pass_dce(graph)
    if fuse:
        fuse_convolutions(model)
    return model


def fuse_convolutions(model: Any, dtypes: tuple[torch.dtype, ...] = (torch.bfloat16,)) -> int:
    """Replace each convolution of ``model``'s graph whose weight is of ``dtypes`` by oneDNN's
    ``mkldnn::_convolution_pointwise``, with the ReLU6 (``hardtanh``) or ReLU that alone reads it
    fused in; in place. The same arithmetic (bit-identical outputs on 32 real photos for make
    run's model; the tests hold it to 1e-6), but one oneDNN primitive a layer instead of ATen's
    convolution and a separate clamp: at batch 32 on one thread, ``model.bf16.pt`` as served ran
    at 1.74x frozen fp32 fused against 1.47x unfused in the same benchmark run (an AMD EPYC
    without AMX; docs/benchmarks.md, "Reduced precision"). The graph then runs on the CPU only.

    Returns:
        How many convolutions were replaced.
    """
    graph = model.graph
    convs = [n for n in graph.nodes() if n.kind() == "aten::_convolution"]
    fused = 0
    for node in convs:
        ins = list(node.inputs())
        weight = ins[1].toIValue()
        if weight is None or weight.dtype not in dtypes or ins[6].toIValue():  # transposed
            continue
        x, w, b, stride, padding, dilation, groups = (ins[i] for i in (0, 1, 2, 3, 4, 5, 8))
        last, attr, bounds = node, "none", []
        uses = node.output().uses()
        user = uses[0].user if len(uses) == 1 else None
        if user is not None and user.kind() in ("aten::hardtanh", "aten::hardtanh_"):
            last, attr = user, "hardtanh"
            bounds = [float(last.inputsAt(i).toIValue()) for i in (1, 2)]
        elif user is not None and user.kind() in ("aten::relu", "aten::relu_"):
            last, attr = user, "relu"
        graph.setInsertPoint(last)
        scalars = graph.create("prim::ListConstruct", [graph.insertConstant(v) for v in bounds])
        scalars.output().setType(
            torch._C.ListType(torch._C.OptionalType(torch._C.NumberType.get()))
        )
        graph.insertNode(scalars)
        args = [x, w, b, padding, stride, dilation, groups, graph.insertConstant(attr)]
        op = graph.create(
            "mkldnn::_convolution_pointwise",
            [*args, scalars.output(), graph.insertConstant(None)],
        )
        op.output().setType(node.output().type())
        graph.insertNode(op)
        last.output().replaceAllUsesWith(op.output())
        if last is not node:
            last.destroy()
        node.destroy()
        fused += 1
    graph.setInsertPoint(graph.return_node())  # not a destroyed node: later passes insert too
    torch._C._jit_pass_lint(graph)
    torch._C._jit_pass_dce(graph)
    return fused


class _Calibration:
    """ONNX Runtime's calibration reader over ``uint8 [N, H, W, 3]`` images."""

    def __init__(self, images: np.ndarray, batch: int = 16) -> None:
        self.batches = iter([images[i : i + batch] for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch)}


def int8_onnx(model_onnx: Path, calibration: np.ndarray) -> bytes:
    """``model_onnx`` statically quantised on ``calibration`` images (module doc)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = type("Reader", (_Calibration, CalibrationDataReader), {})(calibration)
    with tempfile.TemporaryDirectory() as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(model_onnx), str(pre))
        quantize_static(
            str(pre),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv", "Clip"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        return out.read_bytes()


# --- running them -------------------------------------------------------------------------


def torchscript_runner(model: Any) -> Runner:
    """``uint8 batch -> (probabilities, score or None)`` of a TorchScript model."""

    def run(images: np.ndarray) -> Outputs:
        with torch.inference_mode():
            out = model(torch.from_numpy(np.ascontiguousarray(images)))
        out = out if isinstance(out, tuple | list) else (out,)
        score = out[1].float().numpy().reshape(-1) if len(out) > 1 and out[1].numel() else None
        return out[0].float().numpy(), score

    return run


def onnx_runner(model: bytes | Path, threads: int = 1) -> Runner:
    """As :func:`torchscript_runner`, for an ONNX model through ONNX Runtime (CPU)."""
    from training.export.onnx import session

    sess = session(model, threads=threads)
    names = [o.name for o in sess.get_outputs() if o.name in (OUTPUT_NAME, OOD_OUTPUT_NAME)]

    def run(images: np.ndarray) -> Outputs:
        out = dict(
            zip(names, sess.run(names, {INPUT_NAME: np.ascontiguousarray(images)}), strict=True)
        )
        score = out.get(OOD_OUTPUT_NAME)
        return out[OUTPUT_NAME], None if score is None else score.reshape(-1)

    return run


def _all(run: Runner, images: np.ndarray) -> Outputs:
    parts = [run(images[i : i + BATCH]) for i in range(0, len(images), BATCH)]
    scores = [s for _, s in parts]
    score = None if any(s is None for s in scores) else np.concatenate(scores)  # type: ignore[arg-type]
    return np.concatenate([p for p, _ in parts]), score


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean recall over the classes present in ``labels``."""
    recalls = [float((predicted[labels == c] == c).mean()) for c in np.unique(labels)]
    return float(np.mean(recalls))


def accuracy_check(
    reference: Runner,
    variant: Runner,
    images: np.ndarray,
    labels: np.ndarray,
    ood_threshold: float | None = None,
) -> dict[str, Any]:
    """The variant against the reference on ``images`` (``labels``: class indices): top-1
    agreement, both balanced accuracies, the largest probability difference, and for a
    gated model the score's largest relative difference and the share of gate decisions
    (score over ``ood_threshold``) that stay the same."""
    ref_p, ref_s = _all(reference, images)
    var_p, var_s = _all(variant, images)
    ref_top, var_top = ref_p.argmax(1), var_p.argmax(1)
    figures: dict[str, Any] = {
        "images": len(images),
        "agreement": float((ref_top == var_top).mean()),
        "balanced_accuracy_reference": balanced_accuracy(labels, ref_top),
        "balanced_accuracy": balanced_accuracy(labels, var_top),
        "max_abs_diff": float(np.abs(ref_p - var_p).max()),
    }
    figures["balanced_accuracy_drop"] = (
        figures["balanced_accuracy_reference"] - figures["balanced_accuracy"]
    )
    if ref_s is not None and var_s is not None:
        rel = np.abs(var_s - ref_s) / np.maximum(np.abs(ref_s), 1.0)
        figures["ood_max_rel_diff"] = float(rel.max())
        if ood_threshold is not None:
            same = (var_s > ood_threshold) == (ref_s > ood_threshold)
            figures["ood_decisions_same"] = float(same.mean())
    return figures


def gate_failure(
    figures: dict[str, Any], min_agreement: float = MIN_AGREEMENT, max_drop: float = MAX_BA_DROP
) -> str | None:
    """Why ``figures`` (:func:`accuracy_check`) fail the gate, or None when they pass."""
    why = []
    agreement = figures["agreement"]
    if not agreement >= min_agreement:  # NaN fails too
        changed = round((1 - agreement) * figures["images"]) if np.isfinite(agreement) else "?"
        why.append(
            f"top-1 agreement with fp32 {agreement:.2%} < {min_agreement:.0%} "
            f"({changed} of {figures['images']} images change class)"
        )
    if not figures["balanced_accuracy_drop"] <= max_drop:
        why.append(
            f"balanced accuracy {figures['balanced_accuracy']:.4f} against fp32's "
            f"{figures['balanced_accuracy_reference']:.4f} (drop "
            f"{figures['balanced_accuracy_drop']:.4f} > {max_drop})"
        )
    return "; ".join(why) or None


# --- the new version ----------------------------------------------------------------------


@dataclasses.dataclass
class Split:
    """What the gate and the calibration read: validation images and their class indices, and
    training images for the int8 calibration (None when not needed)."""

    val_images: np.ndarray
    val_labels: np.ndarray
    calibration: np.ndarray | None = None


def read_images(paths: Sequence[str], size: tuple[int, int]) -> np.ndarray:
    """``uint8 [N, H, W, 3]``: the files read and resized as the evaluation does."""
    return np.stack([eval_resize(read_image(str(p)), size) for p in paths])


def split_for_checkpoint(
    checkpoint: str | Path,
    size: tuple[int, int],
    calibration: int = CALIBRATION_IMAGES,
    data_dir: str | Path | None = None,
) -> Split:
    """The checkpoint's validation split and ``calibration`` training images of its split
    (stratified by class, seeded), rebuilt as the evaluation does."""
    from training.export.gate import stratified_sample
    from training.recorded_split import datamodule_hparams, rebuild_split

    recorded = datamodule_hparams(checkpoint)
    if not recorded:
        raise DataError(f"{checkpoint} records no data module: pass --checkpoint of a fit")
    split = rebuild_split(recorded, size, str(data_dir) if data_dir else None)
    if split.synthetic:
        raise DataError("the rebuilt split is synthetic: the accuracy check needs real images")
    val = split.splits["val"]
    train = stratified_sample(split.splits["train"], calibration, seed=0) if calibration else None
    return Split(
        read_images(list(val["path"]), size),
        np.array([CLASS_INDEX[label] for label in val["label"]]),
        None if train is None else read_images(list(train["path"]), size),
    )


def build_variant(version_dir: Path, precision: str, calibration: np.ndarray | None) -> bytes:
    """The reduced-precision model file of ``version_dir`` as bytes."""
    if precision == "bf16":
        model = bf16_torchscript(version_dir / TORCHSCRIPT_FILE)
        with tempfile.TemporaryDirectory() as tmp:
            model.save(str(Path(tmp) / "m.pt"))
            return (Path(tmp) / "m.pt").read_bytes()
    if calibration is None or not len(calibration):
        raise ConfigError("int8 needs calibration images (--calibration N, N > 0)")
    return int8_onnx(version_dir / ONNX_FILE, calibration)


def as_served(model: Any) -> Any:
    """``model.bf16.pt`` as the local Triton runs it on the CPU
    (serving/triton/backend_model.py): ``torch.jit.optimize_for_inference``, which gives the
    float32 convolutions to oneDNN with their weights prepacked (the bfloat16 ones are oneDNN's
    already: :func:`fuse_convolutions`). Before the fusion it made the file 1.41x frozen fp32
    against 1.15x as loaded (batch 32, one thread, how Triton's instances run); with it, the
    loaded and the served forms run alike (1.73x and 1.74x, docs/benchmarks.md, "Reduced
    precision"). The result cannot be saved (its oneDNN constants do not serialise), so it is
    made at load, and the gate checks this form."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.optimize_for_inference(model)


def variant_runner(precision: str, data: bytes) -> Runner:
    """A runner of the bytes :func:`build_variant` made, as the local Triton runs them."""
    if precision == "bf16":
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "m.pt").write_bytes(data)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                loaded = torch.jit.load(str(Path(tmp) / "m.pt")).eval()
            return torchscript_runner(as_served(loaded))
    return onnx_runner(data)


def add_precision(
    version_dir: str | Path,
    precision: str,
    split: Split,
    *,
    min_agreement: float = MIN_AGREEMENT,
    max_drop: float = MAX_BA_DROP,
    variant: bytes | None = None,
) -> Path:
    """Write the next version of ``version_dir``'s model: its files plus the ``precision``
    model, once that passes the gate on ``split`` (module doc).

    Args:
        variant: the reduced model's bytes to check instead of building them (tests).

    Returns:
        The new version's folder.

    Raises:
        ConfigError: an unknown precision, a source without the file it reduces, or a variant
            that fails the gate (nothing is written; the message says by how much).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    source = Path(version_dir)
    try:
        metadata = check_artifacts(source)
    except MetadataError as exc:
        raise ConfigError(str(exc)) from None
    if metadata.has_clinical_input:
        raise ConfigError(
            f"{source} is a fusion version (it also takes {CLINICAL_INPUT_NAME}): its "
            "reduced-precision copy is not supported yet (the accuracy check runs the image "
            "input alone); serve its fp32 model"
        )
    kind, file = PRECISIONS[precision]
    if precision == "int8" and "onnx" not in metadata.artifact_files():
        raise ConfigError(f"{source} has no {ONNX_FILE} to quantise: export it with ONNX")
    data = variant if variant is not None else build_variant(source, precision, split.calibration)
    reference = torchscript_runner(_frozen(source / TORCHSCRIPT_FILE))
    figures = accuracy_check(
        reference,
        variant_runner(precision, data),
        split.val_images,
        split.val_labels,
        metadata.ood_threshold(),
    )
    why = gate_failure(figures, min_agreement, max_drop)
    if why is not None:
        raise ConfigError(
            f"the {precision} model of {source} fails the accuracy check on "
            f"{figures['images']} validation images: {why}. Nothing was written; serve the "
            "fp32 version"
        )
    model_dir, source_version = source.parent, metadata.version
    tmp = model_dir / f".tmp-precision-{uuid.uuid4().hex}"
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(METADATA_FILE, ".*"))
    try:
        (tmp / file).write_bytes(data)
        metadata.artifacts = {**metadata.artifact_files(), kind: file}
        metadata.created_at = datetime.now(UTC).isoformat(timespec="seconds")
        metadata.extra = {
            **metadata.extra,
            "precision": {
                precision: {
                    "artifact": kind,
                    "file": file,
                    "source_version": metadata.version,
                    "reference": f"{TORCHSCRIPT_FILE} (fp32, frozen)",
                    "split": "validation",
                    "min_agreement": min_agreement,
                    "max_balanced_accuracy_drop": max_drop,
                    "calibration_images": (
                        0
                        if split.calibration is None or precision != "int8"
                        else len(split.calibration)
                    ),
                    # The gate's CPU: without bf16 units its figures are oneDNN's emulation.
                    **({"cpu_bf16_units": bf16_units()} if precision == "bf16" else {}),
                    **figures,
                }
            },
        }
        with model_lock(model_dir):
            version = place_version(tmp, model_dir, metadata)
            record(
                model_dir, "precision", version, None, source=source_version, precision=precision
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_dir / str(version)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export.precision", description=__doc__)
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--name", default="skin_lesion")
    p.add_argument("--version", type=int, required=True, help="the fp32 version to reduce")
    p.add_argument("--precision", choices=sorted(PRECISIONS), required=True)
    p.add_argument(
        "--calibration", type=int, default=CALIBRATION_IMAGES, help="training images (int8)"
    )
    p.add_argument("--checkpoint", type=Path, help="default: the one metadata.json records")
    p.add_argument("--data-dir", type=Path, help="HAM10000-layout folder (default: recorded)")
    args = p.parse_args(argv)
    source = args.repository / args.name / str(args.version)
    try:
        metadata = check_artifacts(source)
        checkpoint = args.checkpoint or (metadata.checkpoint or {}).get("path")
        if not checkpoint:
            raise ConfigError(f"{source}/metadata.json records no checkpoint: pass --checkpoint")
        split = split_for_checkpoint(
            checkpoint,
            metadata.input_size,
            args.calibration if args.precision == "int8" else 0,
            args.data_dir,
        )
        folder = add_precision(source, args.precision, split)
    except (ConfigError, DataError, MetadataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    f = read_figures(folder, args.precision)
    print(
        f"wrote {folder}: {PRECISIONS[args.precision][1]} agrees with fp32 on "
        f"{f['agreement']:.2%} of {f['images']} validation images, balanced accuracy "
        f"{f['balanced_accuracy']:.4f} (fp32 {f['balanced_accuracy_reference']:.4f}); serve it "
        f"with `python -m serving.versions promote {folder.name}` and "
        f"`python -m serving.triton --runtime {PRECISIONS[args.precision][0]}`"
    )
    warning = bf16_speed_warning(bf16_units()) if args.precision == "bf16" else None
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def read_figures(version_dir: Path, precision: str) -> dict[str, Any]:
    """``metadata.json``'s ``precision.<precision>`` of a version."""
    from contracts.metadata import read_metadata

    entry = read_metadata(version_dir).extra.get("precision", {}).get(precision)
    if not isinstance(entry, dict):
        raise MetadataError(f"{version_dir} has no precision.{precision}")
    return entry


if __name__ == "__main__":
    sys.exit(main())
