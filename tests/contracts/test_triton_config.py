"""config.pbtxt as a protobuf message, and the tensor names it shares with the exported model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from contracts import tensors
from contracts.labels import NUM_CLASSES
from contracts.triton_config import (
    CONFIG_FILE,
    HEADER,
    KNOWN_OUTPUTS,
    LABELS_FILE,
    ONNX_PLATFORM,
    ConfigFileError,
    allow_any_input_size,
    input_size,
    onnxruntime_config,
    production_config,
    read_config,
    served_versions,
    set_outputs,
    set_served_version,
    write_config,
)


def test_tensor_names_follow_the_pytorch_backend_convention() -> None:
    # <name>__<index>: NVIDIA's PyTorch backend binds tensors by position through this name.
    assert re.fullmatch(r"[a-z_]+__0", tensors.INPUT_NAME)
    assert re.fullmatch(r"[a-z_]+__0", tensors.OUTPUT_NAME)
    assert (tensors.INPUT_DATATYPE, tensors.OUTPUT_DATATYPE) == ("UINT8", "FP32")
    assert tensors.DEFAULT_MODEL_NAME == "skin_lesion"
    # The index is the position in the model's returned tuple: the map is always the third.
    assert re.fullmatch(r"[a-z_]+__1", tensors.OOD_OUTPUT_NAME)
    assert re.fullmatch(r"[a-z_]+__2", tensors.CAM_OUTPUT_NAME) and tensors.CAM_DATATYPE == "FP32"
    assert [tensors.output_index(n) for n in KNOWN_OUTPUTS] == [0, 1, 2]
    with pytest.raises(ValueError, match="<name>__<index>"):
        tensors.output_index("probabilities")


def test_production_config_describes_the_exported_model() -> None:
    cfg = production_config("skin_lesion", (112, 150), NUM_CLASSES, version=2)
    assert (cfg.name, cfg.backend, cfg.max_batch_size) == ("skin_lesion", "pytorch", 32)
    (inp,) = cfg.input
    (out,) = cfg.output
    assert (inp.name, inp.data_type, list(inp.dims)) == (
        tensors.INPUT_NAME,
        mc.TYPE_UINT8,
        [-1, -1, 3],  # versions may differ in input size
    )
    assert (out.name, out.data_type, list(out.dims)) == (
        tensors.OUTPUT_NAME,
        mc.TYPE_FP32,
        [NUM_CLASSES],
    )
    assert out.label_filename == LABELS_FILE
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
    assert cfg.parameters["INFERENCE_MODE"].string_value == "true"
    warmup = cfg.model_warmup[0].inputs[tensors.INPUT_NAME]
    assert list(warmup.dims) == [112, 150, 3] and warmup.zero_data
    assert served_versions(cfg) == [2] and input_size(cfg) is None


def test_a_fixed_input_size_is_opened_up_once() -> None:
    cfg = production_config("m", (64, 64), NUM_CLASSES, version=1)
    cfg.input[0].dims[:] = [64, 64, 3]  # as exported before versions could differ in size
    assert input_size(cfg) == (64, 64)
    assert allow_any_input_size(cfg) is True
    assert list(cfg.input[0].dims) == [-1, -1, 3] and input_size(cfg) is None
    assert allow_any_input_size(cfg) is False


def test_served_version_is_the_only_one_named() -> None:
    cfg = production_config("m", (64, 64), NUM_CLASSES, version=1)
    set_served_version(cfg, 5)
    assert served_versions(cfg) == [5]
    cfg.version_policy.Clear()
    cfg.version_policy.latest.num_versions = 1
    assert served_versions(cfg) == []  # a latest policy names no version


def test_input_size_needs_the_named_input() -> None:
    cfg = production_config("m", (64, 64), NUM_CLASSES, version=1)
    cfg.input[0].name = "INPUT0"
    with pytest.raises(ConfigFileError, match="no input named"):
        input_size(cfg)


def test_write_read_round_trip_with_the_header(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_FILE
    cfg = production_config("skin_lesion", (112, 150), NUM_CLASSES, version=3)
    write_config(path, cfg)
    assert path.read_text().startswith(HEADER)
    assert read_config(path) == cfg
    assert [p.name for p in tmp_path.iterdir()] == [CONFIG_FILE]  # no temporary left over
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_missing_and_malformed_configs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="does not exist: export a model first"):
        read_config(tmp_path / CONFIG_FILE)
    (tmp_path / CONFIG_FILE).write_text("name: 'm'\ninput [ { name: ")
    with pytest.raises(ConfigFileError, match="not a valid Triton model config"):
        read_config(tmp_path / CONFIG_FILE)


def _outputs(cfg: mc.ModelConfig) -> list[tuple[str, int, list[int]]]:
    return [(t.name, t.data_type, list(t.dims)) for t in cfg.output]


PROBABILITIES = (tensors.OUTPUT_NAME, mc.TYPE_FP32, [NUM_CLASSES])
SCORE = (tensors.OOD_OUTPUT_NAME, mc.TYPE_FP32, [1])
CAM = (tensors.CAM_OUTPUT_NAME, mc.TYPE_FP32, [NUM_CLASSES, -1, -1])  # any grid


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ([tensors.OUTPUT_NAME], [PROBABILITIES]),
        ([tensors.OUTPUT_NAME, tensors.OOD_OUTPUT_NAME], [PROBABILITIES, SCORE]),
        ([tensors.OUTPUT_NAME, tensors.CAM_OUTPUT_NAME], [PROBABILITIES, CAM]),  # a gap at 1
        (list(KNOWN_OUTPUTS), [PROBABILITIES, SCORE, CAM]),
    ],
)
def test_the_config_lists_the_served_version_s_outputs(
    names: list[str], expected: list[tuple[str, int, list[int]]]
) -> None:
    cfg = production_config("m", (112, 150), NUM_CLASSES, version=1, outputs=names)
    assert _outputs(cfg) == expected
    assert cfg.output[0].label_filename == LABELS_FILE
    for other in ([tensors.OUTPUT_NAME], list(KNOWN_OUTPUTS), names):
        set_outputs(cfg, other)
        assert [t.name for t in cfg.output] == other
    assert set_outputs(cfg, names) is False and cfg.output[0].label_filename == LABELS_FILE


@pytest.mark.parametrize(
    "names",
    [
        [],
        [tensors.CAM_OUTPUT_NAME],
        [tensors.OUTPUT_NAME, tensors.CAM_OUTPUT_NAME, tensors.OOD_OUTPUT_NAME],  # out of order
        [tensors.OUTPUT_NAME, "cam__1"],
    ],
)
def test_outputs_out_of_the_contract_are_refused(names: list[str]) -> None:
    cfg = production_config("m", (112, 150), NUM_CLASSES, version=1)
    with pytest.raises(ConfigFileError, match="may have"):
        set_outputs(cfg, names)


def test_the_onnx_runtime_config_pins_the_map_s_grid_as_the_input_size() -> None:
    cfg = production_config("m", (112, 150), NUM_CLASSES, version=1, outputs=list(KNOWN_OUTPUTS))
    onnx = onnxruntime_config(cfg, (112, 150), (4, 5))
    assert onnx.platform == ONNX_PLATFORM and list(onnx.input[0].dims) == [112, 150, 3]
    assert _outputs(onnx) == [PROBABILITIES, SCORE, (CAM[0], CAM[1], [NUM_CLASSES, 4, 5])]
    assert _outputs(cfg) == [PROBABILITIES, SCORE, CAM]  # the production config is untouched
    assert _outputs(onnxruntime_config(cfg, (112, 150))) == [PROBABILITIES, SCORE, CAM]
    with pytest.raises(ConfigFileError, match="not positive"):
        onnxruntime_config(cfg, (112, 150), (0, 5))
