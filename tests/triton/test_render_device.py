"""The rendering for a CUDA machine (``--device cuda``, ``make bench-gpu``): GPU instances on
GPU 0 and the DEVICE parameter the Python backend reads; checked here without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from contracts.tensors import DEFAULT_MODEL_NAME
from contracts.triton_config import ConfigFileError, read_config
from serving.triton.render import render_repository


@pytest.mark.parametrize(
    ("device", "kind", "gpus"),
    [("cpu", mc.ModelInstanceGroup.KIND_CPU, []), ("cuda", mc.ModelInstanceGroup.KIND_GPU, [0])],
)
def test_device_sets_the_instances_and_the_backend_parameter(
    model_repository: Path, tmp_path: Path, device: str, kind: int, gpus: list[int]
) -> None:
    render_repository(model_repository, tmp_path, instances=2, device=device)
    rendered = read_config(tmp_path / DEFAULT_MODEL_NAME / "config.pbtxt")
    (group,) = rendered.instance_group
    assert (group.kind, group.count, list(group.gpus)) == (kind, 2, gpus)
    assert rendered.parameters["DEVICE"].string_value == device
    assert rendered.backend == "python"


def test_an_unknown_device_is_refused(model_repository: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="unknown device 'tpu'"):
        render_repository(model_repository, tmp_path, device="tpu")
