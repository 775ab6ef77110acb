"""The out-of-distribution score through the real Triton: a gated version answers both outputs,
a version without the gate still answers its probabilities, and promote/rollback between them
give Triton the config each needs."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from contracts.metadata import read_metadata
from contracts.repository import served_version
from contracts.tensors import CAM_OUTPUT_NAME, DEFAULT_MODEL_NAME, OOD_OUTPUT_NAME, OUTPUT_NAME
from contracts.triton_config import read_config
from serving.triton.client import AsyncTritonClassifier, TritonBadRequest, TritonClassifier
from serving.triton.server import run_triton
from serving.versions.__main__ import main as models_main
from tests.factories import SMOKE_GATE_IMAGES, smoke_repository
from training.export import ExportOptions, export

CAM = CAM_OUTPUT_NAME  # every export has the map unless --no-cam
pytestmark = [pytest.mark.triton, pytest.mark.slow]


def _eager(version: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exported TorchScript file's outputs, run here: what Triton must answer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(version / "model.pt")).eval()
    with torch.no_grad():
        probs, score, _ = model(torch.from_numpy(images))
    return probs.numpy(), score.numpy().ravel()


def _outputs(folder: Path) -> list[str]:
    return [t.name for t in read_config(folder / "config.pbtxt").output]


def test_gated_and_image_only_versions_through_promote_and_rollback(
    served_checkpoint, real_lesions_dir, lesions, expected, tmp_path
):
    """A repository of its own (the session's Triton and its history stay untouched): a gated
    smoke export (version 1, served at once; the same seeded weights as the session's served
    checkpoint) and the served checkpoint exported without the gate (version 2)."""
    _, images = lesions
    repo = tmp_path / "repo"
    model_dir = repo / DEFAULT_MODEL_NAME
    gated = smoke_repository(repo, real_lesions_dir, size=lesions[1].shape[1:3], gate=True)
    plain = export(
        served_checkpoint, repo, options=ExportOptions(parity_images=real_lesions_dir, gate=False)
    )
    assert read_metadata(gated).has_ood_output and not read_metadata(plain).has_ood_output
    assert read_metadata(gated).gate["ood"]["fit_images"] <= SMOKE_GATE_IMAGES
    probs_expected, score_expected = _eager(gated, images)
    np.testing.assert_allclose(probs_expected, expected, rtol=0, atol=1e-6)  # same weights
    cache = tmp_path / "triton"
    opts = ["--repository", str(repo), "--cache-dir", str(cache)]
    with (
        run_triton(repo, cache_dir=cache) as server,
        TritonClassifier(server.grpc_url, timeout_s=30) as client,
    ):
        rendered = server.rendered / DEFAULT_MODEL_NAME
        assert served_version(model_dir) == 1
        assert _outputs(model_dir) == _outputs(rendered) == [OUTPUT_NAME, OOD_OUTPUT_NAME, CAM]
        probs, score = client.predict_with_score(images)
        assert probs.shape == (len(images), 7) and score.shape == (len(images),)
        np.testing.assert_allclose(probs, probs_expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(score, score_expected, rtol=1e-4)
        # Callers that want the probabilities alone still get them from a gated version.
        np.testing.assert_allclose(client.predict(images), probs_expected, rtol=0, atol=1e-5)

        async def concurrent() -> list[object]:
            # One dynamic batch may mix requests for one output and for both.
            async with AsyncTritonClassifier(server.grpc_url, timeout_s=30) as aclient:
                return await asyncio.gather(
                    aclient.predict_with_score(images[:3]),
                    aclient.predict(images[3:10]),
                    aclient.predict_with_score(images[10:]),
                )

        first, middle, last = asyncio.run(concurrent())
        np.testing.assert_allclose(first[1], score_expected[:3], rtol=1e-4)
        np.testing.assert_allclose(middle, probs_expected[3:10], rtol=0, atol=1e-5)
        np.testing.assert_allclose(last[0], probs_expected[10:], rtol=0, atol=1e-5)
        np.testing.assert_allclose(last[1], score_expected[10:], rtol=1e-4)

        # A version exported without the gate: one output in the config, as Triton needs.
        assert models_main(["promote", plain.name, *opts]) == 0
        assert _outputs(model_dir) == _outputs(rendered) == [OUTPUT_NAME, CAM]
        assert client.model_metadata()["versions"] == [plain.name]
        np.testing.assert_allclose(client.predict(images), expected, rtol=0, atol=1e-5)
        with pytest.raises(TritonBadRequest, match="no 'ood_score__1' output"):
            client.predict_with_score(images[:1])

        assert models_main(["rollback", *opts]) == 0  # back to the gated one
        assert _outputs(model_dir) == _outputs(rendered) == [OUTPUT_NAME, OOD_OUTPUT_NAME, CAM]
        np.testing.assert_allclose(client.predict_with_score(images)[1], score_expected, rtol=1e-4)
