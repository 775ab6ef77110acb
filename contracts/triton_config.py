"""Triton model configs (``config.pbtxt``) as protobuf messages: build, read, write, edit.

The production config targets NVIDIA's Triton container with the native PyTorch backend
(``model.pt``); :func:`onnxruntime_config` derives from it the variant for Triton's ONNX
Runtime backend (``model.onnx``, docs/export_onnx.md), and the local CPU server renders its
own variant from either (``serving.triton.render``). Working on the ``ModelConfig`` message
from ``tritonclient.grpc.model_config_pb2`` rather than on text means every file we write is
one Triton parses.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from contracts.tensors import (
    CAM_OUTPUT_NAME,
    CLINICAL_INPUT_NAME,
    INPUT_NAME,
    OOD_OUTPUT_NAME,
    OUTPUT_NAME,
)

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
# The model files of a version folder, by artifact kind (``metadata.json``'s ``artifacts``).
TORCHSCRIPT_FILE = "model.pt"
ONNX_FILE = "model.onnx"
# The reduced-precision copies of the fp32 files (training.export.precision), served by the
# local Triton's runtime of the same name (serving.triton.render.RUNTIMES).
BF16_TORCHSCRIPT_FILE = "model.bf16.pt"
INT8_ONNX_FILE = "model.int8.onnx"
ARTIFACT_FILES: dict[str, str] = {
    "torchscript": TORCHSCRIPT_FILE,
    "onnx": ONNX_FILE,
    "torchscript_bf16": BF16_TORCHSCRIPT_FILE,
    "onnx_int8": INT8_ONNX_FILE,
}
# Triton's ONNX Runtime backend, and the name of the ONNX variant of a model's config in its
# ``configs/`` folder: ``tritonserver --model-config-name=onnxruntime`` reads
# ``<model>/configs/onnxruntime.pbtxt`` instead of ``<model>/config.pbtxt``.
ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_CONFIG_NAME = "onnxruntime"
CUSTOM_CONFIG_DIR = "configs"
ONNX_HEADER = (
    "# Written by `python -m training.export.onnx config` from config.pbtxt: the same model\n"
    "# on Triton's ONNX Runtime backend. Write it again after promote/rollback\n"
    "# (docs/export_onnx.md). Tensor names: contracts/tensors.py.\n"
)
# The outputs a version may have, in the order of their ``__<index>`` (contracts/tensors.py).
KNOWN_OUTPUTS: tuple[str, ...] = (OUTPUT_NAME, OOD_OUTPUT_NAME, CAM_OUTPUT_NAME)
MAX_BATCH_SIZE = 32
# Long enough to gather a few concurrent requests, short next to a CNN's forward pass.
QUEUE_DELAY_US = 2000
HEADER = (
    "# Written by `python -m training export`; the served version is changed with\n"
    "# `python -m serving.versions promote|rollback`. Tensor names: contracts/tensors.py.\n"
)


class ConfigFileError(ValueError):
    """A config.pbtxt cannot be read or does not describe this project's model."""


def production_config(  # noqa: PLR0913 (the config's facts, each a keyword at the call)
    name: str,
    input_size: tuple[int, int],
    num_classes: int,
    version: int,
    max_batch_size: int = MAX_BATCH_SIZE,
    outputs: Sequence[str] = (OUTPUT_NAME,),
    clinical_dim: int | None = None,
) -> mc.ModelConfig:
    """The config NVIDIA's Triton container serves ``model.pt`` with, on GPU.

    The image input takes any height and width (``-1``): versions of one model may differ in
    architecture and input size, each recording its own in ``metadata.json`` (the gateway
    resizes to the served version's), so promotion and rollback work across them. Triton's
    dynamic batcher only batches requests of one shape, and a client sends one version's size.

    Args:
        name: the model's name (= its folder in the repository).
        input_size: ``(height, width)`` of the first version: the warm-up request's size.
        num_classes: length of the probability vector.
        version: the version to serve (``version_policy.specific``).
        max_batch_size: largest batch one execution may receive.
        outputs: the served version's outputs (``VersionMetadata.output_names()``).
        clinical_dim: for a fusion version, the length of its clinical input
            (:data:`contracts.tensors.CLINICAL_INPUT_NAME`, float32 ``[N, D]``, the model's second
            argument); None for an image-only one.
    """
    height, width = input_size
    cfg = mc.ModelConfig(name=name, backend="pytorch", max_batch_size=max_batch_size)
    cfg.input.add(name=INPUT_NAME, data_type=mc.TYPE_UINT8, dims=[-1, -1, 3])
    set_clinical_input(cfg, clinical_dim)
    cfg.output.add(
        name=OUTPUT_NAME, data_type=mc.TYPE_FP32, dims=[num_classes], label_filename=LABELS_FILE
    )
    set_outputs(cfg, outputs)
    cfg.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=1)
    set_served_version(cfg, version)
    # No autograd bookkeeping in serving; see the pytorch_backend README's INFERENCE_MODE.
    cfg.parameters["INFERENCE_MODE"].string_value = "true"
    warmup = cfg.model_warmup.add(name="zeros", batch_size=1)
    tensor = warmup.inputs[INPUT_NAME]
    tensor.data_type = mc.TYPE_UINT8
    tensor.dims.extend([height, width, 3])
    tensor.zero_data = True
    if clinical_dim is not None:
        clinical = warmup.inputs[CLINICAL_INPUT_NAME]
        clinical.data_type = mc.TYPE_FP32
        clinical.dims.extend([clinical_dim])
        clinical.zero_data = True  # all zeros: every field unknown (contracts.clinical)
    return cfg


def set_clinical_input(cfg: mc.ModelConfig, dim: int | None) -> bool:
    """Make the config take the clinical input ``[dim]`` after the image (a fusion version), or
    not at all (``dim`` None: an image-only version). Triton's PyTorch backend passes the inputs
    to ``forward`` by their ``__<index>``, and refuses a config whose input count is not the
    model's argument count, so promote and rollback set it with the version, as the outputs.

    Returns:
        True when the inputs changed.
    """
    before = [(t.name, list(t.dims)) for t in cfg.input]
    image = [t for t in cfg.input if t.name == INPUT_NAME]
    kept = mc.ModelInput()
    kept.CopyFrom(image[0] if image else mc.ModelInput(name=INPUT_NAME))
    del cfg.input[:]
    cfg.input.append(kept)
    if dim is not None:
        cfg.input.add(name=CLINICAL_INPUT_NAME, data_type=mc.TYPE_FP32, dims=[dim])
    for warmup in cfg.model_warmup:
        if dim is None and CLINICAL_INPUT_NAME in warmup.inputs:
            del warmup.inputs[CLINICAL_INPUT_NAME]
        elif dim is not None:
            data = warmup.inputs[CLINICAL_INPUT_NAME]
            data.data_type = mc.TYPE_FP32
            del data.dims[:]
            data.dims.extend([dim])
            data.zero_data = True
    return before != [(t.name, list(t.dims)) for t in cfg.input]


def onnxruntime_config(
    cfg: mc.ModelConfig,
    input_size: tuple[int, int],
    cam_grid: tuple[int, int] | None = None,
) -> mc.ModelConfig:
    """``cfg`` (a production config) for Triton's ONNX Runtime backend, serving ``model.onnx``.

    Name, tensors, outputs, batching, instances and the served version stay ``cfg``'s; the
    platform becomes ``onnxruntime_onnx`` with ``default_model_filename: "model.onnx"``, and
    the PyTorch backend's parameters go. The image input is pinned to ``input_size``, the
    served version's (its ``metadata.json``): ``model.onnx`` has a fixed height and width, and
    that backend refuses a config whose dimension is ``-1`` where the model's is fixed. So the
    file is written again whenever the served version changes (docs/export_onnx.md). For the
    same reason the class activation map's ``[7, -1, -1]`` is pinned to ``cam_grid`` (the
    version's ``explain.grid``) when given.

    Raises:
        ConfigFileError: ``cfg`` has no image input, or a size or grid that is not positive.
    """
    height, width = input_size
    if height <= 0 or width <= 0:
        raise ConfigFileError(f"input size {input_size} of {cfg.name!r} is not positive")
    if cam_grid is not None and min(cam_grid) <= 0:
        raise ConfigFileError(f"class activation map grid {cam_grid} is not positive")
    out = mc.ModelConfig()
    out.CopyFrom(cfg)
    out.backend, out.platform = "", ONNX_PLATFORM
    out.default_model_filename = ONNX_FILE
    out.ClearField("parameters")  # INFERENCE_MODE & co. are the PyTorch backend's
    tensor = _image_input(out)
    del tensor.dims[:]
    tensor.dims.extend([height, width, 3])
    for warmup in out.model_warmup:
        for name, data in warmup.inputs.items():
            if name == tensor.name:
                del data.dims[:]
                data.dims.extend([height, width, 3])
    for output in out.output:
        if output.name == CAM_OUTPUT_NAME and cam_grid is not None:
            del output.dims[1:]
            output.dims.extend(cam_grid)
    return out


def set_served_version(cfg: mc.ModelConfig, version: int) -> None:
    """Make ``version`` the only one Triton serves."""
    cfg.version_policy.Clear()
    cfg.version_policy.specific.versions.append(version)


def set_outputs(cfg: mc.ModelConfig, names: Sequence[str]) -> bool:
    """Make the config list exactly the outputs ``names`` (the served version's, from its
    ``VersionMetadata.output_names()``): the probabilities, the out-of-distribution score
    ``[1]`` for a gated version, the class activation map ``[7, -1, -1]`` (any grid: versions
    differ) for an explained one. Triton's PyTorch backend maps the model's returned tensors to
    the config's outputs by their ``__<index>`` names, so the config must name what the served
    version returns: export, promote and rollback set them with the version. The indices may
    have a gap (``probabilities__0`` and ``cam__2`` without the score): the backend takes the
    tensor at each listed index and ignores the others, and an explained version without the
    gate returns an empty placeholder at index 1.

    Returns:
        True when the outputs changed.

    Raises:
        ConfigFileError: a name other than the known outputs, not in their order, no
            probabilities, or a config without the probabilities output to keep.
    """
    known = [n for n in KNOWN_OUTPUTS if n in names]
    if not names or list(names) != known or names[0] != OUTPUT_NAME:
        raise ConfigFileError(
            f"outputs {list(names)}: a version has {OUTPUT_NAME!r} first and may have "
            f"{OOD_OUTPUT_NAME!r} and {CAM_OUTPUT_NAME!r}, in that order"
        )
    probabilities = [t for t in cfg.output if t.name == OUTPUT_NAME]
    if not probabilities:
        raise ConfigFileError(f"config of {cfg.name!r} has no output named {OUTPUT_NAME!r}")
    before = [t.name for t in cfg.output]
    if before == list(names):
        return False
    kept = mc.ModelOutput()
    kept.CopyFrom(probabilities[0])
    del cfg.output[:]
    cfg.output.append(kept)
    if OOD_OUTPUT_NAME in names:
        cfg.output.add(name=OOD_OUTPUT_NAME, data_type=mc.TYPE_FP32, dims=[1])
    if CAM_OUTPUT_NAME in names:
        cfg.output.add(
            name=CAM_OUTPUT_NAME, data_type=mc.TYPE_FP32, dims=[num_classes(cfg), -1, -1]
        )
    return True


def num_classes(cfg: mc.ModelConfig) -> int:
    """The length of the probability vector (the first output's single dimension)."""
    for tensor in cfg.output:
        if tensor.name == OUTPUT_NAME and len(tensor.dims) == 1:
            return int(tensor.dims[0])
    raise ConfigFileError(f"config of {cfg.name!r} has no output {OUTPUT_NAME!r} of one dimension")


def served_versions(cfg: mc.ModelConfig) -> list[int]:
    """Versions the policy names (empty for ``latest``/``all`` policies)."""
    if cfg.version_policy.HasField("specific"):
        return list(cfg.version_policy.specific.versions)
    return []


def _image_input(cfg: mc.ModelConfig) -> mc.ModelInput:
    for tensor in cfg.input:
        if tensor.name == INPUT_NAME:
            return tensor
    raise ConfigFileError(f"config of {cfg.name!r} has no input named {INPUT_NAME!r}")


def input_size(cfg: mc.ModelConfig) -> tuple[int, int] | None:
    """``(height, width)`` of the image input; None when it takes any size (``-1``)."""
    height, width = (int(d) for d in _image_input(cfg).dims[:2])
    return None if height < 0 or width < 0 else (height, width)


def allow_any_input_size(cfg: mc.ModelConfig) -> bool:
    """Let the image input take any height and width; True when that changed the config
    (a repository exported before versions could differ in size)."""
    tensor = _image_input(cfg)
    if list(tensor.dims[:2]) == [-1, -1]:
        return False
    del tensor.dims[:]
    tensor.dims.extend([-1, -1, 3])
    return True


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a ``config.pbtxt``; a clear error when it is missing or malformed."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigFileError(f"{path} does not exist: export a model first") from None
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigFileError(f"{path} is not a valid Triton model config: {exc}") from None


def write_config(path: Path, cfg: mc.ModelConfig, header: str = HEADER) -> None:
    """Write atomically: readers (Triton, other commands) never see half a file."""
    write_text_atomic(Path(path), header + text_format.MessageToString(cfg))


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
