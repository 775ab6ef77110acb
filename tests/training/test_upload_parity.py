"""Training's evaluation pipeline sees exactly what the gateway gives the model for an upload."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from contracts.images import prepare_image, read_image
from training.augment import eval_transform

MAX = 40_000_000


@pytest.fixture(scope="module")
def photos(real_lesions_dir: Path) -> list[Path]:
    with open(real_lesions_dir / "labels.csv") as f:
        return [real_lesions_dir / f"{r['image_id']}.jpg" for r in csv.DictReader(f)]


@pytest.mark.parametrize("size", [(224, 224), (112, 150), (600, 800)])
def test_resize_matches_training_evaluation_exactly(
    photos: list[Path], size: tuple[int, int]
) -> None:
    transform = eval_transform(size)
    for path in photos:
        expected = transform(image=read_image(str(path)))["image"]
        got = prepare_image(path.read_bytes(), size, MAX).model_input
        assert got.shape == (*size, 3) and got.dtype == np.uint8
        assert np.array_equal(got, expected), path.name
