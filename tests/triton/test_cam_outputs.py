"""The class activation map ``cam__2`` served by the real local Triton, for both runtimes of the
Python backend (``model.pt`` with torch, ``model.onnx`` with ONNX Runtime).

The version has no gate, so its config lists ``probabilities__0`` and ``cam__2`` with a gap at
index 1, as Triton's PyTorch backend allows: ``model.pt`` returns an empty placeholder there,
``model.onnx`` has no output of that index. Each response carries the requested outputs only.
The map is the hand-built blob detector's of ``tests/export/test_cam.py``: "mel" peaks where
the blob is.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from contracts.metadata import VersionMetadata, read_metadata
from contracts.tensors import (
    CAM_OUTPUT_NAME,
    DEFAULT_MODEL_NAME,
    INPUT_DATATYPE,
    INPUT_NAME,
    OUTPUT_NAME,
)
from contracts.triton_config import CONFIG_FILE
from models.cam import CamClassifier
from serving.triton.server import TritonOptions, TritonServer
from tests.export.test_cam import GRID, MEL, SIZE, blob_detector, check_known_answer, images
from training.export import export_model
from training.export.cam import CamLogits

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    detector = blob_detector()
    return export_model(
        detector,
        tmp_path_factory.mktemp("cam-repo"),
        SIZE,
        images(),
        VersionMetadata(DEFAULT_MODEL_NAME, SIZE, temperature=2.0),
        explainer=CamLogits(CamClassifier(detector)),
    )


@pytest.fixture(scope="module", params=["torchscript", "onnx"])
def server(
    request: pytest.FixtureRequest, version: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    options = TritonOptions(runtime=request.param)
    with TritonServer(version.parents[1], tmp_path_factory.mktemp("cam-triton"), options) as s:
        yield s


def _infer(url: str, batch: np.ndarray, outputs: list[str] | None) -> dict[str, np.ndarray]:
    tensor = grpcclient.InferInput(INPUT_NAME, list(batch.shape), INPUT_DATATYPE)
    tensor.set_data_from_numpy(batch)
    asked = None if outputs is None else [grpcclient.InferRequestedOutput(n) for n in outputs]
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer(DEFAULT_MODEL_NAME, [tensor], outputs=asked)
    return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}


def test_the_served_map_is_the_exported_model_s(server, version):
    rendered = server.rendered / DEFAULT_MODEL_NAME
    cfg = text_format.Parse((rendered / CONFIG_FILE).read_text(), mc.ModelConfig())
    assert [(o.name, list(o.dims)[:1]) for o in cfg.output] == [
        (OUTPUT_NAME, [7]),
        (CAM_OUTPUT_NAME, [7]),  # then the grid: any (-1, -1), or the served version's
    ]
    x = images()
    got = _infer(server.grpc_url, x, [OUTPUT_NAME, CAM_OUTPUT_NAME])
    assert sorted(got) == [CAM_OUTPUT_NAME, OUTPUT_NAME]
    assert (
        got[CAM_OUTPUT_NAME].shape == (len(x), 7, *GRID)
        and got[CAM_OUTPUT_NAME].dtype == np.float32
    )
    check_known_answer(got[CAM_OUTPUT_NAME])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        probs, _, cam = torch.jit.load(str(version / "model.pt"))(torch.from_numpy(x))
    np.testing.assert_allclose(got[OUTPUT_NAME], probs.numpy(), atol=1e-4)
    scale = max(1.0, float(cam.abs().max()))
    assert np.abs(got[CAM_OUTPUT_NAME] - cam.numpy()).max() <= 1e-4 * scale
    assert read_metadata(version).cam_grid() == GRID
    assert float(got[CAM_OUTPUT_NAME][0, MEL].max()) > 0


def test_only_the_requested_outputs_come_back(server):
    x = images()[:2]
    assert sorted(_infer(server.grpc_url, x, [CAM_OUTPUT_NAME])) == [CAM_OUTPUT_NAME]
    assert sorted(_infer(server.grpc_url, x, [OUTPUT_NAME])) == [OUTPUT_NAME]
    assert sorted(_infer(server.grpc_url, x, None)) == [CAM_OUTPUT_NAME, OUTPUT_NAME]
