"""``model.onnx`` served by the real local Triton: the Python backend with ``RUNTIME: "onnx"``
runs each version through ONNX Runtime, and refuses a version whose ONNX file is missing or
takes another input than its metadata.json says.

The server is started with the rendering's ``runtime`` set on :class:`TritonServer`'s render
options (``serving.triton.render.render_repository(runtime="onnx")``), which is what a
``TritonOptions`` field and a ``--runtime`` flag of ``python -m serving.triton`` pass on.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from contracts.metadata import read_metadata
from contracts.tensors import (
    CAM_OUTPUT_NAME,
    DEFAULT_MODEL_NAME,
    INPUT_NAME,
    OOD_OUTPUT_NAME,
    OUTPUT_NAME,
)
from contracts.triton_config import (
    CONFIG_FILE,
    ONNX_FILE,
    ConfigFileError,
    read_config,
    write_config,
)
from models import create_classifier
from serving.triton.client import TritonClassifier, TritonError, load_models
from serving.triton.render import auto_runtime, render_repository
from serving.triton.server import TritonOptions, TritonServer
from serving.triton.state import STATE_FILE
from tests.factories import smoke_repository
from tests.fixtures_serving import ROOT
from training.export import ProbabilityModel, parity_batch, to_onnx

pytestmark = [pytest.mark.triton, pytest.mark.slow]
SIZE = (48, 64)  # smoke_repository's


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory, real_lesions_dir: Path) -> Path:
    """A real gated version (probabilities and the knn OOD score), exported with model.onnx."""
    return smoke_repository(tmp_path_factory.mktemp("onnx-repo"), real_lesions_dir)


@pytest.fixture(scope="module")
def onnx_triton(version: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    options = TritonOptions(runtime="onnx")
    server = TritonServer(version.parents[1], tmp_path_factory.mktemp("onnx-triton"), options)
    with server:
        yield server


@pytest.fixture(scope="module")
def images(real_lesions_dir: Path) -> np.ndarray:
    return parity_batch(real_lesions_dir, SIZE, n=28)


@contextlib.contextmanager
def swapped(path: Path, content: bytes | None) -> Iterator[None]:
    """``path`` holding ``content`` (removed for None) inside the block, restored after."""
    kept = path.with_name(path.name + ".kept")
    shutil.copy2(path, kept)
    try:
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content)
        yield
    finally:
        kept.replace(path)


def _infer(url: str, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with TritonClassifier(url) as client:
        return client.predict_with_score(batch)


def test_onnx_runtime_serves_what_model_pt_gives(onnx_triton, version, images):
    rendered = onnx_triton.rendered / DEFAULT_MODEL_NAME
    cfg = text_format.Parse((rendered / CONFIG_FILE).read_text(), mc.ModelConfig())
    assert cfg.backend == "python" and cfg.parameters["RUNTIME"].string_value == "onnx"
    assert list(cfg.input[0].dims) == [*SIZE, 3]  # the ONNX config: the served version's size
    assert [o.name for o in cfg.output] == [OUTPUT_NAME, OOD_OUTPUT_NAME, CAM_OUTPUT_NAME]
    assert (rendered / "1" / ONNX_FILE).resolve() == (version / ONNX_FILE).resolve()

    one = _infer(onnx_triton.grpc_url, images[:1])
    rest = _infer(onnx_triton.grpc_url, images[1:])
    probs = np.concatenate([one[0], rest[0]])
    score = np.concatenate([one[1], rest[1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(version / "model.pt"))
    with torch.no_grad():
        expected_probs, expected_score, _ = (t.numpy() for t in scripted(torch.from_numpy(images)))
    expected_score = expected_score.ravel()  # the client gives one score an image
    assert probs.shape == (28, 7) and probs.dtype == np.float32
    assert np.abs(probs - expected_probs).max() <= 1e-4
    rel = np.abs(score - expected_score) / np.maximum(np.abs(expected_score), 1.0)
    assert score.shape == (28,) and rel.max() <= 1e-4
    # The ONNX config pins the served version's size: Triton itself refuses another one.
    with pytest.raises(TritonError, match=r"Expected \[-1,48,64,3\], got \[1,40,56,3\]"):
        _infer(onnx_triton.grpc_url, np.zeros((1, 40, 56, 3), np.uint8))


def test_an_onnx_file_of_another_input_size_is_refused_at_load(onnx_triton, version, images):
    other = ProbabilityModel(create_classifier("compact_cnn")).eval()
    example = torch.zeros((2, 40, 56, 3), dtype=torch.uint8)
    wrong, _ = to_onnx(other, example, [OUTPUT_NAME])
    with swapped(version / ONNX_FILE, wrong):
        with pytest.raises(TritonError) as caught:
            load_models(onnx_triton.grpc_url, [DEFAULT_MODEL_NAME], timeout_s=60)
        message = str(caught.value)
        assert str(version.resolve() / ONNX_FILE) in message
        assert "[-1, 40, 56, 3]" in message and "[-1, 48, 64, 3]" in message
    load_models(onnx_triton.grpc_url, [DEFAULT_MODEL_NAME], timeout_s=60)
    assert _infer(onnx_triton.grpc_url, images[:2])[0].shape == (2, 7)


def test_a_missing_onnx_file_is_refused_by_the_rendering_and_at_load(
    onnx_triton, version, images, tmp_path
):
    with swapped(version / ONNX_FILE, None):
        for runtime in ("onnx", "torchscript"):  # metadata.json lists both files
            with pytest.raises(
                ConfigFileError, match=re.escape(f"{version.resolve() / ONNX_FILE} is missing")
            ):
                render_repository(version.parents[1], tmp_path / runtime, runtime=runtime)
        # Loaded without rendering again, the backend finds the rendered link dangling
        # (model.py touched: Triton reloads a version only when its folder changed).
        (onnx_triton.rendered / DEFAULT_MODEL_NAME / "1" / "model.py").touch()
        with pytest.raises(
            TritonError, match=re.escape(f"{version.resolve() / ONNX_FILE} is missing")
        ):
            load_models(onnx_triton.grpc_url, [DEFAULT_MODEL_NAME], timeout_s=60)
    onnx_triton.reload()
    assert _infer(onnx_triton.grpc_url, images[:2])[1].shape == (2,)


def test_a_version_without_onnx_cannot_be_rendered_for_onnx(version, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(version.parents[1], repo)
    copy = repo / DEFAULT_MODEL_NAME / "1"
    metadata = read_metadata(copy)
    metadata.artifacts = {"torchscript": "model.pt"}  # as a version exported with --no-onnx
    metadata.write(copy / "metadata.json")
    (copy / ONNX_FILE).unlink()
    with pytest.raises(
        ConfigFileError, match=re.escape(f"{copy.resolve() / ONNX_FILE} does not exist")
    ):
        render_repository(repo, tmp_path / "onnx", runtime="onnx")
    assert render_repository(repo, tmp_path / "torchscript") == [DEFAULT_MODEL_NAME]
    with pytest.raises(ConfigFileError, match="unknown runtime 'tensorrt'"):
        render_repository(repo, tmp_path / "x", runtime="tensorrt")


def _rendered_runtime(rendered: Path) -> str:
    cfg = read_config(rendered / DEFAULT_MODEL_NAME / CONFIG_FILE)
    return cfg.parameters["RUNTIME"].string_value


def test_auto_serves_onnx_only_where_every_served_version_allows_it(version, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(version.parents[1], repo)
    model = repo / DEFAULT_MODEL_NAME
    render_repository(repo, tmp_path / "a", runtime="auto")
    assert auto_runtime(model) == "onnx" == _rendered_runtime(tmp_path / "a")
    assert auto_runtime(model, device="cuda") == "torchscript"  # no CUDA in onnxruntime here

    # A second served version of another input size: ONNX Runtime's config has one size.
    shutil.copytree(model / "1", model / "2")
    other = read_metadata(model / "2")
    other.input_size = (64, 80)
    other.write(model / "2" / "metadata.json")
    cfg = read_config(model / CONFIG_FILE)
    cfg.version_policy.specific.versions[:] = [1, 2]
    write_config(model / CONFIG_FILE, cfg)
    assert auto_runtime(model) == "torchscript"
    render_repository(repo, tmp_path / "b", runtime="auto")
    assert _rendered_runtime(tmp_path / "b") == "torchscript"

    # Back to one size, but version 2 exported without ONNX (--no-onnx).
    other.input_size = SIZE
    other.artifacts = {"torchscript": "model.pt"}
    other.write(model / "2" / "metadata.json")
    (model / "2" / ONNX_FILE).unlink()
    assert auto_runtime(model) == "torchscript"
    cfg.version_policy.specific.versions[:] = [1]  # version 2 no longer served
    write_config(model / CONFIG_FILE, cfg)
    assert auto_runtime(model) == "onnx"


def test_the_input_is_named_as_the_config_says(version):
    # The ONNX file's input and outputs carry the tensor names Triton's config gives.
    from training.export import check_onnx

    sess = check_onnx(version / ONNX_FILE, SIZE, [OUTPUT_NAME, OOD_OUTPUT_NAME, CAM_OUTPUT_NAME])
    assert [i.name for i in sess.get_inputs()] == [INPUT_NAME]


@pytest.mark.parametrize("runtime", ["onnx", None])
def test_the_cli_serves_the_onnx_artifact(
    version: Path, images: np.ndarray, tmp_path: Path, runtime: str | None
) -> None:
    """``python -m serving.triton --runtime onnx``, and without ``--runtime`` (``auto``: the
    version has model.onnx): the state file says which (a promote re-renders with it), the
    rendered config asks the backend for model.onnx, and it answers."""
    flag = ["--runtime", runtime] if runtime else []
    cli = subprocess.Popen(
        [sys.executable, "-m", "serving.triton", "--repository", str(version.parents[1]),
         "--cache-dir", str(tmp_path), *flag, "--grpc-port", "0",
         "--http-port", "0", "--metrics-port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert cli.stdout is not None
        line = cli.stdout.readline()
        assert line.startswith("Triton ready"), line + cli.stdout.read()
        state = json.loads((tmp_path / STATE_FILE).read_text())
        assert state["runtime"] == (runtime or "auto")
        assert _rendered_runtime(Path(state["rendered"])) == "onnx"
        probabilities, _ = _infer(state["grpc_url"], images[:4])
        assert probabilities.shape == (4, 7)
        assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=60) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
