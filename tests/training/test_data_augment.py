"""Augmentation pipelines on real images: output contract, shared resize, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.images import eval_resize, read_image
from training.augment import AugmentOptions, eval_transform, train_transform

OFF = AugmentOptions(
    hflip=0, vflip=0, rotate90=0, affine=0, brightness_contrast=0, hue_saturation=0
)


@pytest.fixture(scope="module")
def photos(ham_dir, real_lesions_dir):
    """A (downscaled) training image from the HAM10000 folder and a full-size upload, RGB uint8."""
    small = read_image(str(next((ham_dir / "images").glob("*.jpg"))))
    full = read_image(str(next(real_lesions_dir.glob("*.jpg"))))
    return small, full


@pytest.mark.parametrize("size", [(112, 150), (64, 64), (224, 224)])
def test_both_pipelines_output_uint8_rgb_at_size(photos, size):
    for image in photos:
        for transform in (eval_transform(size), train_transform(size, seed=0)):
            out = transform(image=image)["image"]
            assert out.dtype == np.uint8 and out.shape == (*size, 3)


def test_eval_pipeline_is_eval_resize(photos):
    for image in photos:
        expected = eval_resize(image, (112, 150))
        np.testing.assert_array_equal(eval_transform((112, 150))(image=image)["image"], expected)
        # All augmentations off: training sees exactly what evaluation and serving see.
        off = train_transform((112, 150), OFF, seed=0)(image=image)["image"]
        np.testing.assert_array_equal(off, expected)


def test_train_pipeline_is_seeded_and_random(photos):
    image = photos[1]
    a, b = train_transform((112, 150), seed=1), train_transform((112, 150), seed=1)
    first = [a(image=image)["image"] for _ in range(4)]
    np.testing.assert_array_equal(
        np.stack(first), np.stack([b(image=image)["image"] for _ in first])
    )
    assert not all(np.array_equal(first[0], x) for x in first[1:])
    other = train_transform((112, 150), seed=2)(image=image)["image"]
    assert not np.array_equal(first[0], other)


def test_rotate90_only_for_square_outputs():
    names = [type(t).__name__ for t in train_transform((112, 150)).transforms]
    assert "RandomRotate90" not in names and "Affine" in names
    assert "RandomRotate90" in [type(t).__name__ for t in train_transform((96, 96)).transforms]
