"""Version management against the running Triton: promote, roll back, delete, no restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from contracts.images import eval_resize, read_image
from contracts.repository import history
from contracts.tensors import DEFAULT_MODEL_NAME
from contracts.triton_config import read_config, served_versions
from serving.model_info import ModelCatalog, ServedModel
from serving.triton.client import AsyncTritonClassifier, TritonClassifier
from serving.versions.__main__ import main as models_main
from tests.factories import smoke_checkpoint
from training.export import ExportOptions, ProbabilityModel, export, load_checkpoint

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture
def export_hot(
    served_checkpoint: Path, model_repository: Path, real_lesions_dir: Path, lesions
) -> Callable[[], tuple[Path, np.ndarray]]:
    """Export the served checkpoint again with a softmax temperature of 2, so its outputs
    differ: a call returns the new version's folder and its eager probabilities of ``lesions``.
    """

    def export_hot() -> tuple[Path, np.ndarray]:
        version = export(
            served_checkpoint,
            model_repository,
            options=ExportOptions(parity_images=real_lesions_dir, temperature=2.0),
        )
        with torch.no_grad():
            hot = ProbabilityModel(
                load_checkpoint(served_checkpoint).classifier, temperature=2.0
            ).eval()
            return version, hot(torch.from_numpy(lesions[1])).numpy()

    return export_hot


def test_second_export_is_served_after_promotion_and_rolled_back(
    triton, model_repository, lesions, expected, export_hot, capsys
):
    _, images = lesions
    model_dir = model_repository / DEFAULT_MODEL_NAME
    opts = ["--repository", str(model_repository), "--cache-dir", str(triton.cache_dir)]
    pid = triton.process.pid
    v2, expected2 = export_hot()  # version 2
    assert v2 == model_dir / "2"
    assert np.abs(expected2 - expected).max() > 1e-3

    client = TritonClassifier(triton.grpc_url, timeout_s=30)
    # Exported is not served: version 1 still answers.
    np.testing.assert_allclose(client.predict(images), expected, rtol=0, atol=1e-5)

    assert models_main(["promote", "2", *opts]) == 0
    assert served_versions(read_config(model_dir / "config.pbtxt")) == [2]
    assert client.model_metadata()["versions"] == ["2"]
    np.testing.assert_allclose(client.predict(images), expected2, rtol=0, atol=1e-5)

    capsys.readouterr()
    assert models_main(["list", "--json", *opts]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["served"]) for v in listing["versions"]] == [(1, False), (2, True)]
    assert listing["triton_loaded"] == ["2"]
    assert listing["versions"][1]["parity"] <= 1e-5

    assert models_main(["delete", "2", *opts]) == 2
    assert "served" in capsys.readouterr().err

    assert models_main(["rollback", *opts]) == 0
    assert client.model_metadata()["versions"] == ["1"]
    np.testing.assert_allclose(client.predict(images), expected, rtol=0, atol=1e-5)

    assert models_main(["delete", "2", *opts]) == 0
    assert not v2.exists() and not (triton.rendered / DEFAULT_MODEL_NAME / "2").exists()
    assert [e["action"] for e in history(model_dir)] == [
        "first_export",
        "export",
        "promote",
        "rollback",
        "delete",
    ]
    # One server process did all of this.
    assert triton.process.pid == pid and triton.process.poll() is None


def test_rollback_without_history_and_unknown_versions_are_refused(
    triton, model_repository, capsys
):
    opts = ["--repository", str(model_repository), "--cache-dir", str(triton.cache_dir)]
    assert models_main(["promote", "7", *opts]) == 2
    assert "no version 7" in capsys.readouterr().err
    assert models_main(["rollback", *opts]) == 2  # nothing served before version 1
    assert "no earlier served version" in capsys.readouterr().err
    assert models_main(["delete", "1", *opts]) == 2  # the served one
    assert "promote another version" in capsys.readouterr().err
    assert models_main(["list", "--repository", str(model_repository / "nowhere")]) == 2


def test_promotion_and_rollback_across_input_sizes(
    triton, model_repository, real_lesions_dir, lesions, expected, tmp_path
):
    """A version trained at another input size is promoted and rolled back like any other:
    Triton takes any size, and the gateway's catalog resizes to the served version's own."""
    other_size = (96, 128)
    ids = lesions[0]
    small = np.stack(
        [eval_resize(read_image(str(real_lesions_dir / f"{i}.jpg")), other_size) for i in ids]
    )
    ckpt = smoke_checkpoint(tmp_path / "other.ckpt", small[:8], [0, 1, 2, 3, 4, 5, 6, 0])
    v2 = export(ckpt, model_repository, options=ExportOptions(parity_images=real_lesions_dir))
    with torch.no_grad():
        expected2 = ProbabilityModel(load_checkpoint(ckpt).classifier).eval()(
            torch.from_numpy(small)
        )
    opts = ["--repository", str(model_repository), "--cache-dir", str(triton.cache_dir)]
    client = TritonClassifier(triton.grpc_url, timeout_s=30)

    def served_now() -> ServedModel:
        async def resolve() -> ServedModel:
            client = AsyncTritonClassifier(triton.grpc_url, timeout_s=30)
            try:
                return await ModelCatalog(client, model_repository, 0.0).served()
            finally:
                await client.close()

        return asyncio.run(resolve())

    try:
        assert models_main(["promote", v2.name, *opts]) == 0
        served = served_now()
        assert (served.version, served.input_size) == (v2.name, other_size)
        np.testing.assert_allclose(client.predict(small), expected2.numpy(), rtol=0, atol=1e-5)
        assert models_main(["rollback", *opts]) == 0
        served = served_now()
        assert (served.version, served.input_size) == ("1", lesions[1].shape[1:3])
        np.testing.assert_allclose(client.predict(lesions[1]), expected, rtol=0, atol=1e-5)
    finally:
        if served_versions(read_config(model_repository / DEFAULT_MODEL_NAME / "config.pbtxt")) != [
            1
        ]:
            models_main(["promote", "1", *opts])
        models_main(["delete", v2.name, *opts])
