"""Version management against the running Triton: promote, roll back, delete, no restart."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from contracts.repository import history
from contracts.tensors import DEFAULT_MODEL_NAME
from contracts.triton_config import read_config, served_versions
from serving.triton.client import TritonClassifier
from serving.versions.__main__ import main as models_main
from training.export import ProbabilityModel, export, load_checkpoint

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def test_second_export_is_served_after_promotion_and_rolled_back(
    triton, model_repository, served_checkpoint, real_lesions_dir, lesions, expected, capsys
):
    _, images = lesions
    model_dir = model_repository / DEFAULT_MODEL_NAME
    opts = ["--repository", str(model_repository), "--cache-dir", str(triton.cache_dir)]
    pid = triton.process.pid
    # Version 2: the same network with a softmax temperature of 2, so its outputs differ.
    v2 = export(
        served_checkpoint, model_repository, parity_images=real_lesions_dir, temperature=2.0
    )
    assert v2 == model_dir / "2"
    with torch.no_grad():
        hot = ProbabilityModel(
            load_checkpoint(served_checkpoint).classifier, temperature=2.0
        ).eval()
        expected2 = hot(torch.from_numpy(images)).numpy()
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
