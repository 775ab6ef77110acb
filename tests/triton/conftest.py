"""One real Triton for the session, serving a real exported LesionClassifier.

The checkpoint comes from a real Lightning ``Trainer.fit`` of two steps on real lesion images
(``training.export.smoke_checkpoint``), exported by the real export path. Other test folders
can get the same in a few lines::

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
import pandas as pd
import pytest
import torch

from contracts.images import eval_resize, read_image
from contracts.labels import CLASS_INDEX
from serving.triton.server import TritonServer, run_triton
from tests.factories import smoke_checkpoint
from training.export import ProbabilityModel, export, load_checkpoint

SIZE = (48, 64)


@pytest.fixture(scope="session")
def lesions(real_lesions_dir: Path) -> tuple[list[str], np.ndarray]:
    """All 28 real lesion photos, resized for the model: ``(image_ids, uint8 [28, H, W, 3])``."""
    table = pd.read_csv(real_lesions_dir / "labels.csv")
    images = [
        eval_resize(read_image(str(real_lesions_dir / f"{i}.jpg")), SIZE) for i in table.image_id
    ]
    return list(table.image_id), np.stack(images)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, real_lesions_dir: Path, lesions) -> Path:
    """A real LesionClassifier checkpoint: two training steps on one image of each class."""
    table = pd.read_csv(real_lesions_dir / "labels.csv")
    pick = table.index[::4]  # labels.csv holds 4 images per class, sorted by class
    labels = [CLASS_INDEX[d] for d in table.dx[pick]]
    path = tmp_path_factory.mktemp("ckpt") / "smoke.ckpt"
    return smoke_checkpoint(path, lesions[1][pick], labels, dataset_version="smoke-real-lesions")


@pytest.fixture(scope="session")
def eager(checkpoint: Path) -> ProbabilityModel:
    """The checkpoint's model in eager PyTorch: what Triton's answers must equal."""
    return ProbabilityModel(load_checkpoint(checkpoint).classifier).eval()


@pytest.fixture(scope="session")
def expected(eager: ProbabilityModel, lesions) -> np.ndarray:
    """The eager model's probabilities of the 28 real lesions, ``[28, 7]``."""
    with torch.no_grad():
        return eager(torch.from_numpy(lesions[1])).numpy()


@pytest.fixture(scope="session")
def model_repository(
    tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, real_lesions_dir: Path
) -> Path:
    repo = tmp_path_factory.mktemp("model_repository")
    export(checkpoint, repo, parity_images=real_lesions_dir)
    return repo


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory, model_repository: Path) -> TritonServer:
    """The real tritonserver binary serving ``model_repository`` (version 1) on 127.0.0.1."""
    with run_triton(model_repository, cache_dir=tmp_path_factory.mktemp("triton")) as server:
        yield server
