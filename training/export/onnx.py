"""ONNX beside TorchScript: the conversion, the file's signature, the ONNX Runtime parity check.

Every exported version holds ``model.onnx`` next to ``model.pt``: the same served module
(:class:`training.export.wrapper.ProbabilityModel` or the gated
:class:`training.export.ood.GatedModel`, TTA and ensembles included), ``uint8 [N, H, W, 3]`` in
with a dynamic batch dimension and the version's own height and width, the same named outputs
(``probabilities__0``, ``ood_score__1`` where the version has the gate, ``cam__2`` where it has
the class activation map, ``[-1, 7, h, w]`` at its grid; ``training.export.cam``). ONNX binds
outputs by name, so ``model.onnx`` has only the named ones (no placeholder at index 1 of an
explained version without the gate). Export checks it through ONNX Runtime (CPU) on the real
parity images, the whole batch and one image alone, against the eager module: probabilities
within :data:`ONNX_TOLERANCE` (absolute), the score within
:data:`training.export.ood.SCORE_TOLERANCE` (relative), the map within
:data:`training.export.cam.CAM_TOLERANCE` (relative to its scale); a version that fails is not
written.

The exporter: torch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``),
deprecated since torch 2.9 but present in 2.14, takes 0.3-0.5 s for EfficientNet-Lite0 where
the ``torch.export``-based one (``dynamo=True``, onnxscript) takes 6-8 s on this CPU for the
same graph and the same parity (docs/export_onnx.md). It is tried first, and the
``torch.export`` one when it fails (or is gone from a later torch); ``metadata.json``'s
``onnx.exporter`` says which made the file.

    python -m training.export.onnx config model_repository/skin_lesion

writes ``configs/onnxruntime.pbtxt`` beside the model's ``config.pbtxt``: the served version on
Triton's ONNX Runtime backend (``tritonserver --model-config-name=onnxruntime``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from contracts.errors import ConfigError
from contracts.labels import NUM_CLASSES
from contracts.metadata import MetadataError, check_artifacts
from contracts.tensors import (
    CAM_OUTPUT_NAME,
    CLINICAL_INPUT_NAME,
    INPUT_NAME,
    OOD_OUTPUT_NAME,
    output_index,
)
from contracts.triton_config import (
    CONFIG_FILE,
    CUSTOM_CONFIG_DIR,
    ONNX_CONFIG_NAME,
    ONNX_FILE,
    ONNX_HEADER,
    ConfigFileError,
    onnxruntime_config,
    read_config,
    served_versions,
    write_config,
)
from training.export.torchscript import quiet_torchscript

ONNX_TOLERANCE = 1e-4  # max abs difference of probabilities, eager vs ONNX Runtime
ONNX_OPSET = 17
# Tried in this order: the TorchScript-based exporter (fast), then torch.export's (onnxscript).
EXPORTERS: tuple[str, ...] = ("torchscript", "dynamo")
LEGACY_WARNINGS = (
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed",
)


@contextlib.contextmanager
def quiet_onnx() -> Iterator[None]:
    """Silence the legacy exporter's deprecation notices and TorchScript's, nothing else."""
    with quiet_torchscript(), warnings.catch_warnings():
        for message in LEGACY_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        # The tracer's note on Python-side shape arithmetic (TTA's square check; the sizes
        # are the version's own and fixed, the batch stays symbolic, parity checks both).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


class SelectOutputs(nn.Module):
    """A served module's returned tensors at ``indices`` only (the named outputs' positions:
    an explained version without the gate returns a placeholder at index 1 that ONNX has no
    name for)."""

    def __init__(self, model: nn.Module, indices: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.indices = list(indices)

    def forward(
        self, image: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        out = self.model(image, clinical)
        return tuple(out[i] for i in self.indices)


def _named_only(model: nn.Module, outputs: Sequence[str]) -> nn.Module:
    """``model``, or :class:`SelectOutputs` of it where its returned tuple has unnamed places."""
    indices = [output_index(n) for n in outputs]
    if indices == list(range(len(indices))):
        return model
    # In eval mode: the exporter puts the module back in the mode it found it in, and a
    # wrapper in training mode would put the served module's BatchNorm into training mode.
    return SelectOutputs(model, indices).eval()


def _export(
    model: nn.Module, example: tuple[torch.Tensor, ...], outputs: Sequence[str], how: str
) -> bytes:
    inputs = [INPUT_NAME, CLINICAL_INPUT_NAME][: len(example)]
    if how == "torchscript":
        buffer = io.BytesIO()
        torch.onnx.export(
            model,
            example,
            buffer,
            dynamo=False,
            input_names=inputs,
            output_names=list(outputs),
            dynamic_axes={n: {0: "batch"} for n in (*inputs, *outputs)},
            opset_version=ONNX_OPSET,
        )
        return buffer.getvalue()
    if how == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            input_names=inputs,
            output_names=list(outputs),
            dynamic_shapes=tuple({0: batch} for _ in example),
            verbose=False,
        )
        if program is None:  # only when a file is given
            raise ConfigError("torch.onnx.export returned no program")
        return bytes(program.model_proto.SerializeToString())
    raise ConfigError(f"unknown ONNX exporter {how!r}; choose one of {', '.join(EXPORTERS)}")


def to_onnx(
    model: nn.Module,
    example: torch.Tensor,
    outputs: Sequence[str],
    exporters: Sequence[str] = EXPORTERS,
    clinical: torch.Tensor | None = None,
) -> tuple[bytes, str]:
    """The served module as an ONNX model: ``(serialized bytes, exporter that made them)``.

    Args:
        model: ``uint8 [N, H, W, 3]`` (and ``clinical``) -> the outputs ``outputs`` names, in
            eval mode.
        example: a batch of two or more real images at the version's size.
        outputs: the output names in order (``VersionMetadata.output_names()``).
        exporters: tried in order until one succeeds.
        clinical: a fusion model's clinical rows of ``example`` (``float32 [N, D]``): the file
            then takes them as its second input :data:`CLINICAL_INPUT_NAME`.

    Raises:
        ConfigError: no exporter could convert the module (each one's error in the message).
    """
    errors = []
    named = _named_only(model.eval(), outputs)
    for how in exporters:
        try:
            with quiet_onnx(), torch.no_grad():
                args = (example,) if clinical is None else (example, clinical)
                return _export(named, args, outputs, how), how
        except Exception as exc:  # noqa: BLE001 - each exporter fails in its own ways
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            errors.append(f"{how}: {type(exc).__name__}: {first}")
    raise ConfigError(
        f"{type(model).__name__} cannot be exported to ONNX ({'; '.join(errors)}): nothing was "
        "written. Export with --no-onnx to write model.pt alone (metadata.json's artifacts "
        "then lists it alone), or make the module exportable"
    )


def session(model: bytes | str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime session on the CPU execution provider, ``threads`` intra-op threads.

    Raises:
        ConfigError: ONNX Runtime cannot load the model.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle pool threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE for torch).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph/... types
        name = "the exported ONNX model" if isinstance(model, bytes) else str(model)
        raise ConfigError(f"ONNX Runtime cannot load {name}: {exc}") from None


def _dims(shape: Sequence[Any]) -> list[int]:
    """ONNX Runtime's shape with every symbolic dimension (a name, or None) as -1."""
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def _want_output(
    name: str, cam_grid: tuple[int, int] | None, got: dict[str, list[int]]
) -> tuple[str, str, list[int]]:
    """What the version's output ``name`` must be; the map's grid is ``cam_grid``, or when not
    given whatever positive grid the file has."""
    if name == CAM_OUTPUT_NAME:
        dims = got.get(name, [])
        found = tuple(dims[2:]) if len(dims) == 4 and min(dims[2:]) > 0 else (0, 0)
        h, w = cam_grid if cam_grid is not None else found
        return name, "tensor(float)", [-1, NUM_CLASSES, h, w]
    return name, "tensor(float)", [-1, 1 if name == OOD_OUTPUT_NAME else NUM_CLASSES]


def signature_mismatch(
    sess: Any,
    size: tuple[int, int],
    outputs: Sequence[str],
    cam_grid: tuple[int, int] | None = None,
    clinical_dim: int | None = None,
) -> str | None:
    """What about an ONNX model's inputs and outputs disagrees with the version, or None.

    The version takes ``uint8 [-1, H, W, 3]`` as :data:`INPUT_NAME` (``metadata.json``'s
    ``input_size``) and returns ``float32 [-1, 7]`` (``[-1, 1]`` for the score,
    ``[-1, 7, h, w]`` for the class activation map at ``cam_grid``, any fixed grid when None)
    under ``outputs``' names; ``-1`` is the batch, which must be dynamic. A fusion version
    (``clinical_dim``) also takes ``float32 [-1, D]`` as :data:`CLINICAL_INPUT_NAME`.
    """
    height, width = size
    want_in = [(INPUT_NAME, "tensor(uint8)", [-1, height, width, 3])]
    if clinical_dim is not None:
        want_in.append((CLINICAL_INPUT_NAME, "tensor(float)", [-1, clinical_dim]))
    got_in = [(i.name, i.type, _dims(i.shape)) for i in sess.get_inputs()]
    if got_in != want_in:
        return f"inputs {got_in or 'none'}, metadata.json's input_size says {want_in}"
    got_out = [(o.name, o.type, _dims(o.shape)) for o in sess.get_outputs()]
    want_out = [_want_output(n, cam_grid, {g[0]: g[2] for g in got_out}) for n in outputs]
    if got_out != want_out:
        return f"outputs {got_out}, the version's outputs are {want_out}"
    return None


def check_onnx(
    model: bytes | str | Path,
    size: tuple[int, int],
    outputs: Sequence[str],
    cam_grid: tuple[int, int] | None = None,
    clinical_dim: int | None = None,
) -> Any:
    """A session on ``model`` once its signature is the version's (:func:`signature_mismatch`).

    Raises:
        ConfigError: it cannot be loaded, or its inputs or outputs differ (the message names
            the file, ``model.onnx`` for bytes about to be written, and the difference).
    """
    sess = session(model)
    why = signature_mismatch(sess, size, outputs, cam_grid, clinical_dim)
    if why is not None:
        name = ONNX_FILE if isinstance(model, bytes) else str(model)
        raise ConfigError(f"{name} does not take what the version does: it has {why}")
    return sess


class OnnxRuntimeModel(nn.Module):
    """An ONNX Runtime session as a module: ``uint8 [N, H, W, 3]`` -> its outputs (a tensor,
    or a tuple laid out as the served module's, each output at its name's ``__<index>`` and an
    empty ``[N, 0]`` placeholder where the served module has one), for
    :func:`training.export.torchscript.parity_report`."""

    def __init__(self, sess: Any) -> None:
        super().__init__()
        self.sess = sess
        self.names = [o.name for o in sess.get_outputs()]

    def forward(
        self, image: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        feed = {INPUT_NAME: np.ascontiguousarray(image.numpy())}
        if CLINICAL_INPUT_NAME in {i.name for i in self.sess.get_inputs()}:
            if clinical is None:
                raise ConfigError(f"this ONNX model takes {CLINICAL_INPUT_NAME}: pass the rows")
            feed[CLINICAL_INPUT_NAME] = np.ascontiguousarray(clinical.numpy(), np.float32)
        out = self.sess.run(self.names, feed)
        tensors = {
            output_index(n): torch.from_numpy(np.asarray(o))
            for n, o in zip(self.names, out, strict=True)
        }
        if len(tensors) == 1 and 0 in tensors:
            return tensors[0]
        empty = torch.zeros(image.shape[0], 0)
        return tuple(tensors.get(i, empty) for i in range(max(tensors) + 1))


def onnx_facts(exporter: str) -> dict[str, Any]:
    """``metadata.json``'s ``onnx``: how ``model.onnx`` was made."""
    import onnx
    import onnxruntime as ort

    return {
        "file": ONNX_FILE,
        "exporter": exporter,
        "opset": ONNX_OPSET if exporter == "torchscript" else None,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": ort.__version__,
    }


def write_onnxruntime_config(model_dir: Path, out: Path | None = None) -> Path:
    """Write the model's config for Triton's ONNX Runtime backend (see the module doc).

    The served version (``config.pbtxt``'s ``version_policy``) must have ``model.onnx``; the
    config takes its input size.

    Returns:
        The file written: ``out``, by default ``<model_dir>/configs/onnxruntime.pbtxt``.

    Raises:
        ConfigError: no config, no single served version, or a served version without
            ``model.onnx``.
    """
    model_dir = Path(model_dir)
    try:
        cfg = read_config(model_dir / CONFIG_FILE)
        served = served_versions(cfg)
        if len(served) != 1:
            raise ConfigFileError(
                f"{model_dir / CONFIG_FILE} serves versions {served}: promote one first"
            )
        metadata = check_artifacts(model_dir / str(served[0]))
        if "onnx" not in metadata.artifact_files():
            raise ConfigFileError(
                f"version {served[0]} of {model_dir} has no {ONNX_FILE} (exported before ONNX "
                "or with --no-onnx): export the checkpoint again, or serve it with the PyTorch "
                "backend's config.pbtxt"
            )
        onnx_cfg = onnxruntime_config(cfg, metadata.input_size, metadata.cam_grid())
    except (ConfigFileError, MetadataError) as exc:
        raise ConfigError(str(exc)) from None
    path = Path(out) if out else model_dir / CUSTOM_CONFIG_DIR / f"{ONNX_CONFIG_NAME}.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_config(path, onnx_cfg, header=ONNX_HEADER)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export.onnx", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    config = sub.add_parser("config", help="write the model's ONNX Runtime config")
    config.add_argument("model_dir", type=Path, help="e.g. model_repository/skin_lesion")
    config.add_argument("--out", type=Path, help="default: MODEL_DIR/configs/onnxruntime.pbtxt")
    args = p.parse_args(argv)
    try:
        path = write_onnxruntime_config(args.model_dir, args.out)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
