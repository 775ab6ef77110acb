"""The 28 real lesion photos at the served model's size, and what eager PyTorch makes of them.

Triton itself is the session's one (``triton`` in tests/fixtures_serving.py), serving
``served_checkpoint`` exported by the real export path; these tests compare its answers with
the same checkpoint run eagerly. Other test folders start the same server in a few lines::

    from serving.triton.server import run_triton
    from tests.factories import smoke_repository

    @pytest.fixture(scope="session")
    def triton(tmp_path_factory, real_lesions_dir):
        repo = tmp_path_factory.mktemp("model_repository")
        smoke_repository(repo, real_lesions_dir)
        with run_triton(repo, cache_dir=tmp_path_factory.mktemp("triton")) as server:
            yield server  # server.grpc_url
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from contracts.images import eval_resize, read_image
from tests.fixtures_serving import MODEL_SIZE
from training.export import ProbabilityModel, load_checkpoint


@pytest.fixture(scope="session")
def lesions(
    lesion_rows: list[dict[str, str]], real_lesions_dir: Path
) -> tuple[list[str], np.ndarray]:
    """All 28 real lesion photos, resized for the model: ``(image_ids, uint8 [28, H, W, 3])``."""
    ids = [row["image_id"] for row in lesion_rows]
    images = [eval_resize(read_image(str(real_lesions_dir / f"{i}.jpg")), MODEL_SIZE) for i in ids]
    return ids, np.stack(images)


@pytest.fixture(scope="session")
def eager(served_checkpoint: Path) -> ProbabilityModel:
    """The served checkpoint's model in eager PyTorch: what Triton's answers must equal."""
    return ProbabilityModel(load_checkpoint(served_checkpoint).classifier).eval()


@pytest.fixture(scope="session")
def expected(eager: ProbabilityModel, lesions: tuple[list[str], np.ndarray]) -> np.ndarray:
    """The eager model's probabilities of the 28 real lesions, ``[28, 7]``."""
    with torch.no_grad():
        return eager(torch.from_numpy(lesions[1])).numpy()
