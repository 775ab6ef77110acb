"""A real LesionClassifier checkpoint (two Lightning training steps on real lesion photos)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data import read_image
from training.export import smoke_checkpoint
from training.labels import CLASS_INDEX
from training.transforms import eval_resize

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
