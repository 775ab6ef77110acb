"""An exported ensemble served by the real Triton answers like the evaluation's ensemble."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contracts.images import eval_resize, read_image
from serving.triton.client import TritonClassifier
from serving.triton.server import run_triton
from training.export.variants import export_variant

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def test_ensemble_served_by_triton_equals_the_evaluated_ensemble(ev, tmp_path, real_lesions_dir):
    repo = tmp_path / "repo"
    version = export_variant(
        ev, "ensemble", repo, parity_images=real_lesions_dir, reference_images=50
    )
    meta = json.loads((version / "metadata.json").read_text())
    assert len(meta["ensemble"]["members"]) == 2
    size = tuple(meta["input_size"])
    images = np.stack([eval_resize(read_image(p), size) for p in ev.cases.frame["path"]])
    with (
        run_triton(repo, cache_dir=tmp_path / "triton") as server,
        TritonClassifier(server.grpc_url) as client,
    ):
        served = np.concatenate(
            [client.predict(images[i : i + 8]) for i in range(0, len(images), 8)]
        )
    np.testing.assert_allclose(served, ev.variants["ensemble"].test, atol=2e-5)
