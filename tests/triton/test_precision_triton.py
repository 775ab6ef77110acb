"""The reduced-precision copies of ``training.export.precision`` served by the real local Triton
(Python backend, ``--runtime torchscript_bf16`` / ``onnx_int8``): the answers on the 28 real
full-size lesion photos are the reduced file's own, and within the gate's tolerance of the
fp32 ``model.pt``; a version without the file is not rendered for that runtime.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from contracts.labels import CLASS_INDEX
from contracts.repository import promote
from contracts.tensors import DEFAULT_MODEL_NAME
from contracts.triton_config import ConfigFileError
from serving.triton.client import TritonClassifier
from serving.triton.render import render_repository
from serving.triton.server import TritonOptions, TritonServer
from tests.cpu import cpu_bf16_units
from tests.factories import smoke_repository
from training.export.precision import (
    MIN_AGREEMENT,
    Split,
    add_precision,
    onnx_runner,
    read_figures,
    read_images,
    torchscript_runner,
    variant_runner,
)

pytestmark = [pytest.mark.triton, pytest.mark.slow]
SIZE = (48, 64)  # smoke_repository's
# The served answers against the reduced file run in this process: the same computation.
SAME = 1e-5
# The served bf16 answers against fp32: what the gate accepted on its images, on the photos
# (the production model's validation figure is 0.10, docs/benchmarks.md).
BF16_MAX_ABS_DIFF = 0.1


@pytest.fixture(scope="module")
def photos(real_lesions_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pd.read_csv(real_lesions_dir / "labels.csv")
    images = read_images([str(real_lesions_dir / f"{i}.jpg") for i in table.image_id], SIZE)
    return images, np.array([CLASS_INDEX[d] for d in table.dx])


@pytest.fixture(scope="module")
def reduced(tmp_path_factory: pytest.TempPathFactory, real_lesions_dir: Path, photos) -> Path:
    """A real gated version (1) and its bf16 (2) and int8 (3) copies; 2 is served."""
    source = smoke_repository(tmp_path_factory.mktemp("precision-repo"), real_lesions_dir)
    split = Split(*photos, calibration=photos[0])
    bf16 = add_precision(source, "bf16", split)
    # The smoke model's probabilities are near ties; the int8 copy is only checked for being
    # served as it is, so its gate is opened here (the production gate: test_precision.py).
    add_precision(source, "int8", split, min_agreement=0.0, max_drop=1.0)
    promote(source.parent, int(bf16.name))
    return bf16


def _served(repository: Path, cache: Path, runtime: str) -> Iterator[TritonServer]:
    with TritonServer(repository, cache, TritonOptions(runtime=runtime)) as server:
        yield server


@pytest.fixture(scope="module")
def bf16_triton(reduced: Path, tmp_path_factory) -> Iterator[TritonServer]:
    yield from _served(reduced.parents[1], tmp_path_factory.mktemp("bf16"), "torchscript_bf16")


def _fp32(version: Path, images: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(version / "model.pt"))
    return torchscript_runner(model)(images)[0]


def _ask(url: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with TritonClassifier(url) as client:
        one = client.predict_with_score(images[:1])
        rest = client.predict_with_score(images[1:])
    return np.concatenate([one[0], rest[0]]), np.concatenate([one[1], rest[1]])


def test_triton_serves_the_bf16_copy_within_the_tolerance_of_fp32(bf16_triton, reduced, photos):
    images, _ = photos
    probs, score = _ask(bf16_triton.grpc_url, images)
    assert probs.shape == (28, 7) and probs.dtype == np.float32 and score.shape == (28,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        own = variant_runner("bf16", (reduced / "model.bf16.pt").read_bytes())(images)
    assert np.abs(probs - own[0]).max() <= SAME  # what Triton ran is the bf16 file, as served
    assert own[1] is not None and np.abs(score - own[1]).max() <= SAME
    fp32 = _fp32(reduced, images)
    assert np.abs(own[0] - fp32).max() > SAME  # so the first check tells the two files apart
    assert float((probs.argmax(1) == fp32.argmax(1)).mean()) >= MIN_AGREEMENT
    assert np.abs(probs - fp32).max() <= BF16_MAX_ABS_DIFF
    assert read_figures(reduced, "bf16")["agreement"] >= MIN_AGREEMENT


def test_triton_warns_when_this_cpu_would_emulate_bf16(bf16_triton):
    """The backend's load says so in Triton's log exactly when the CPU has neither AMX nor
    AVX-512 bf16 (the kernel's flags, read here), where model.bf16.pt runs slower than fp32."""
    log = bf16_triton.log_path.read_text(errors="replace")
    assert ("neither AMX nor AVX-512 bf16" in log) == (not cpu_bf16_units())


def test_triton_serves_the_int8_copy_as_onnx_runtime_runs_it(reduced, photos, tmp_path):
    images, _ = photos
    int8 = reduced.parent / "3"
    promote(reduced.parent, 3)
    try:
        for server in _served(reduced.parents[1], tmp_path / "cache", "onnx_int8"):
            probs, score = _ask(server.grpc_url, images)
    finally:
        promote(reduced.parent, int(reduced.name))
    own = onnx_runner(int8 / "model.int8.onnx")(images)
    assert np.abs(probs - own[0]).max() <= SAME
    assert own[1] is not None and np.abs(score - own[1]).max() <= SAME
    assert not np.allclose(probs, _fp32(int8, images), atol=1e-7)  # not the fp32 file


def test_a_version_without_the_reduced_file_is_not_rendered_for_its_runtime(reduced, tmp_path):
    repository = reduced.parents[1]
    promote(reduced.parent, 1)  # the fp32 version: no model.bf16.pt
    try:
        missing = reduced.parent / "1" / "model.bf16.pt"
        with pytest.raises(ConfigFileError, match=re.escape(f"{missing.resolve()} does not exist")):
            render_repository(repository, tmp_path / "r", runtime="torchscript_bf16")
    finally:
        promote(reduced.parent, int(reduced.name))
    assert render_repository(repository, tmp_path / "ok", runtime="torchscript_bf16") == [
        DEFAULT_MODEL_NAME
    ]
