"""A real LesionClassifier checkpoint (two Lightning training steps on real lesion photos)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contracts.images import eval_resize, read_image
from contracts.labels import CLASS_INDEX
from tests.factories import smoke_checkpoint

SIZE = (48, 64)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, real_lesions_dir: Path) -> Path:
    table = pd.read_csv(real_lesions_dir / "labels.csv").iloc[::4]  # one image per class
    images = np.stack(
        [eval_resize(read_image(str(real_lesions_dir / f"{i}.jpg")), SIZE) for i in table.image_id]
    )
    labels = [CLASS_INDEX[d] for d in table.dx]
    path = tmp_path_factory.mktemp("ckpt") / "smoke.ckpt"
    return smoke_checkpoint(path, images, labels, dataset_version="0123456789abcdef")
