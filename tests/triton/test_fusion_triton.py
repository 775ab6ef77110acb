"""The real local Triton answering a two-input (fusion) version: ``image__0`` and
``clinical__1`` sent with tritonclient, for both runtimes of the Python backend (``model.pt``
with torch, ``model.onnx`` with ONNX Runtime). The answers are the eager model's on the real
photos with their own metadata rows, and change when only the clinical input changes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from contracts import clinical
from contracts.images import eval_resize, read_image
from contracts.labels import CLASSES
from contracts.tensors import (
    CLINICAL_DATATYPE,
    CLINICAL_INPUT_NAME,
    DEFAULT_MODEL_NAME,
    INPUT_DATATYPE,
    INPUT_NAME,
    OUTPUT_NAME,
)
from contracts.triton_config import CONFIG_FILE
from serving.batch_predict import predict_folder
from serving.gate import GatePolicy
from serving.triton.client import TritonBadRequest, TritonClassifier
from serving.triton.server import TritonOptions, TritonServer
from tests.factories import fusion_version
from tests.triton.test_readme_client import README, ROOT
from training.export import ProbabilityModel

pytestmark = [pytest.mark.triton, pytest.mark.slow]

SIZE = (48, 64)


@pytest.fixture(scope="module")
def lesions(real_lesions_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 28 real photos at the model's size and their own metadata rows, encoded."""
    table = pd.read_csv(real_lesions_dir / "labels.csv")
    images = np.stack(
        [eval_resize(read_image(str(real_lesions_dir / f"{i}.jpg")), SIZE) for i in table.image_id]
    )
    return images, clinical.encode_batch(table.age, table.sex, table.localization)


@pytest.fixture(scope="module")
def fusion(
    real_lesions_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ProbabilityModel, Path]:
    return fusion_version(real_lesions_dir, tmp_path_factory.mktemp("fusion-repo"), SIZE)


@pytest.fixture(scope="module", params=["torchscript", "onnx"])
def server(
    request: pytest.FixtureRequest, fusion, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    _, version = fusion
    options = TritonOptions(runtime=request.param)
    with TritonServer(version.parents[1], tmp_path_factory.mktemp("fusion-triton"), options) as s:
        yield s


def _infer(url: str, images: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    image = grpcclient.InferInput(INPUT_NAME, list(images.shape), INPUT_DATATYPE)
    image.set_data_from_numpy(images)
    inputs = [image]
    if rows is not None:
        tensor = grpcclient.InferInput(CLINICAL_INPUT_NAME, list(rows.shape), CLINICAL_DATATYPE)
        tensor.set_data_from_numpy(np.ascontiguousarray(rows, np.float32))
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer(DEFAULT_MODEL_NAME, inputs)
    return np.asarray(result.as_numpy(OUTPUT_NAME))


def test_triton_declares_and_answers_both_inputs(server, fusion, lesions):
    eager, _ = fusion
    images, rows = lesions
    rendered = server.rendered / DEFAULT_MODEL_NAME / CONFIG_FILE
    cfg = text_format.Parse(rendered.read_text(), mc.ModelConfig())
    assert [(t.name, list(t.dims)) for t in cfg.input] == [
        (
            INPUT_NAME,
            [-1, -1, 3] if server.render_options["runtime"] == "torchscript" else [*SIZE, 3],
        ),
        (CLINICAL_INPUT_NAME, [clinical.DIM]),
    ]
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        served = client.get_model_metadata(DEFAULT_MODEL_NAME, as_json=True)
    assert [t["name"] for t in served["inputs"]] == [INPUT_NAME, CLINICAL_INPUT_NAME]
    with torch.no_grad():
        expected = eager(torch.from_numpy(images), torch.from_numpy(rows)).numpy()
    tolerance = 1e-5 if server.render_options["runtime"] == "torchscript" else 1e-4
    for batch in (slice(0, 28), slice(3, 4)):
        got = _infer(server.grpc_url, images[batch], rows[batch])
        assert np.abs(got - expected[batch]).max() <= tolerance
    # The same photos with other forms (all fields unknown; everyone 90 and male): other
    # answers, each the eager model's for those rows.
    for other in (
        np.zeros_like(rows),
        clinical.encode_batch([90] * len(rows), ["male"] * len(rows), [None] * len(rows)),
    ):
        got_other = _infer(server.grpc_url, images, other)
        with torch.no_grad():
            want = eager(torch.from_numpy(images), torch.from_numpy(other)).numpy()
        assert np.abs(got_other - want).max() <= tolerance
        assert np.abs(got_other - expected).max() > 1e-3


def test_the_client_sends_the_rows_and_a_request_without_them_is_refused(server, fusion, lesions):
    eager, _ = fusion
    images, rows = lesions
    with TritonClassifier(server.grpc_url) as client:
        got = client.predict(images[:5], clinical=rows[:5])
        with torch.no_grad():
            want = eager(torch.from_numpy(images[:5]), torch.from_numpy(rows[:5])).numpy()
        assert np.abs(got - want).max() <= 1e-4
        with pytest.raises(TritonBadRequest, match="clinical rows"):
            client.predict(images[:5], clinical=rows[:4])  # one row short: refused before sending
        with pytest.raises(Exception, match=CLINICAL_INPUT_NAME):
            client.predict(images[:5])  # Triton refuses a request without a required input
    with pytest.raises(InferenceServerException, match=CLINICAL_INPUT_NAME):
        _infer(server.grpc_url, images[:2], None)


def test_batch_predict_sends_each_photo_s_own_metadata(
    server, fusion, lesions, real_lesions_dir, tmp_path
):
    eager, version = fusion
    images, rows = lesions
    output = tmp_path / "predictions.csv"
    with TritonClassifier(server.grpc_url) as client:
        written, failures = predict_folder(
            real_lesions_dir / "labels.csv",
            output,
            client,
            batch_size=10,
            progress=False,
            repository=version.parents[1],
            policy=GatePolicy(False, False),
        )
    assert (written, failures) == (28, [])
    got = pd.read_csv(output)
    table = pd.read_csv(real_lesions_dir / "labels.csv")
    assert got.image_id.tolist() == table.image_id.tolist()
    with torch.no_grad():
        want = eager(torch.from_numpy(images), torch.from_numpy(rows)).numpy()
        blind = eager(torch.from_numpy(images)).numpy()  # every field unknown
    np.testing.assert_allclose(got[list(CLASSES)].to_numpy(), want, atol=2e-5)
    assert np.abs(got[list(CLASSES)].to_numpy() - blind).max() > 1e-3


@pytest.mark.parametrize("server", ["torchscript"], indirect=True)  # one runtime is enough
def test_the_readme_two_input_client_answers_with_the_form(
    server, fusion, real_lesions_dir, tmp_path
):
    """model_repository/README.md's two-input block, as written, after the first block's
    set-up (its image-only call left out: a fusion version refuses it), against the fusion
    version: it prints the eager model's answer for the README's form (55, female, back)."""
    assert server.render_options["runtime"] == "torchscript"
    eager, version = fusion
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    setup = blocks[0].split("result = client.infer(")[0]
    script = setup + next(b for b in blocks if CLINICAL_INPUT_NAME in b)
    (tmp_path / "model_repository").symlink_to(version.parents[1])
    photo = sorted(real_lesions_dir.glob("*.jpg"))[0]
    (tmp_path / "lesion.jpg").symlink_to(photo)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SKIN_TRITON_URL": server.grpc_url}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    image = torch.from_numpy(eval_resize(read_image(str(photo)), SIZE)[None])
    form = torch.from_numpy(clinical.encode_batch([55], ["female"], ["back"]))
    with torch.no_grad():
        probs = eager(image, form)[0].numpy()
        blind = eager(image)[0].numpy()
    printed = re.findall(r"\(np\.float32\(([0-9.e-]+)\), '(\w+)'\)", out.stdout)
    labels = (version.parent / "labels.txt").read_text().split()
    assert [name for _, name in printed] == [labels[i] for i in probs.argsort()[::-1][:3]]
    assert abs(float(printed[0][0]) - float(probs.max())) <= 1e-4
    assert np.abs(probs - blind).max() > 1e-3  # the form did change the answer
