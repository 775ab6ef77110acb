"""The quality contract's colourfulness check: grey images have none, real lesion photos plenty;
versions exported before the check still parse; the check runs after ``uniform`` and before
``underexposed``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from contracts.images import eval_resize, read_image
from contracts.metadata import jsonable
from contracts.quality import (
    BLURRED,
    COLOURLESS,
    REASON_CODES,
    UNDEREXPOSED,
    UNIFORM,
    ImageFeatures,
    QualityThresholds,
    check_content,
    colourfulness,
    fit_quality_thresholds,
    luminance,
    measure,
)

SIZE = (112, 150)  # the test model's input (tests/fixtures_serving.py MODEL_SIZE)
# The HAM10000 training images' least colourfulness at the model input, as export measured it
# (fit_quality_thresholds on the training split: 7.9; their 0.1 percentile, 9.9).
TRAINING_LIKE = 7.9
OLD = {  # gate.quality of a version exported before the colourfulness check
    "min_short_side": 112,
    "max_aspect": 2.0,
    "min_contrast": 7.2,
    "min_brightness": 96.6,
    "max_brightness": 213.0,
    "min_sharpness": 8.7,
}


def grey(rgb: np.ndarray) -> np.ndarray:
    """The photo as a greyscale copy in RGB (R = G = B = its luminance)."""
    y = np.clip(luminance(rgb).round(), 0, 255).astype(np.uint8)
    return np.repeat(y[..., None], 3, axis=-1)


def features(rgb: np.ndarray) -> ImageFeatures:
    return measure(eval_resize(rgb, SIZE), rgb.shape[1], rgb.shape[0])


@pytest.fixture(scope="module")
def photos(real_lesions_dir: Path) -> list[np.ndarray]:
    found = [read_image(str(p)) for p in sorted(real_lesions_dir.glob("*.jpg"))]
    assert len(found) >= 28
    return found


def test_a_grey_image_has_no_colour() -> None:
    assert colourfulness(np.full((40, 30, 3), 128, np.uint8)) == 0.0
    ramp = np.repeat(np.linspace(0, 255, 150, dtype=np.float32).astype(np.uint8)[None], 112, 0)
    assert colourfulness(np.repeat(ramp[..., None], 3, axis=-1)) == 0.0
    assert colourfulness(np.zeros((10, 10, 3), np.uint8)) == 0.0


def test_known_answer() -> None:
    """Pure red: rg = 255, yb = 127.5, no spread: 0.3 * hypot(255, 127.5)."""
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    assert colourfulness(red) == pytest.approx(0.3 * math.hypot(255, 127.5), rel=1e-6)


def test_real_lesion_photos_are_colourful_and_their_grey_copies_are_not(
    photos: list[np.ndarray],
) -> None:
    """Every real full-size photo is well above the training images' least colourfulness; its
    greyscale copy measures 0 and is refused as colourless (after passing ``uniform``)."""
    t = QualityThresholds(1, 100.0, 0.0, 0.0, 255.0, 0.0, min_colourfulness=TRAINING_LIKE)
    for rgb in photos:
        f = features(rgb)
        assert f.colourfulness > 1.5 * TRAINING_LIKE, f
        assert check_content(f, t) is None
        g = features(grey(rgb))
        assert g.colourfulness == 0.0
        assert g.contrast > 0 and abs(g.brightness - f.brightness) < 1.0
        refusal = check_content(g, t)
        assert refusal is not None and refusal.code == COLOURLESS
        assert "no colour" in refusal.message and f"{TRAINING_LIKE:.1f}" in refusal.message


def test_measure_reports_colourfulness(photos: list[np.ndarray]) -> None:
    rgb = photos[0]
    model_input = eval_resize(rgb, SIZE)
    f = measure(model_input, rgb.shape[1], rgb.shape[0])
    assert f.colourfulness == colourfulness(model_input)
    assert set(f.to_dict()) == {
        "short_side",
        "aspect",
        "brightness",
        "contrast",
        "sharpness",
        "colourfulness",
    }


def test_fit_sets_each_threshold_at_the_training_range() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(1, 1000, size=1000)
    feats = [
        ImageFeatures(450, 1.33, 150.0 - v / 100, 30.0 + v / 100, 50.0 + v, colourfulness=v)
        for v in values
    ]
    t = fit_quality_thresholds(feats, SIZE)
    # Each the extreme of the training images, rounded outward to 3 decimals ...
    assert values.min() - 1e-3 < t.min_colourfulness <= values.min()
    assert 50.0 + values.min() - 1e-3 < t.min_sharpness <= 50.0 + values.min()
    assert 30.0 + values.min() / 100 - 1e-3 < t.min_contrast <= 30.0 + values.min() / 100
    assert 150.0 - values.max() / 100 - 1e-3 < t.min_brightness <= 150.0 - values.max() / 100
    assert 150.0 - values.min() / 100 <= t.max_brightness < 150.0 - values.min() / 100 + 1e-3
    # ... so that every training image passes its own thresholds.
    assert all(check_content(f, t) is None for f in feats)


def test_old_metadata_without_the_key_or_with_null_never_refuses_for_colour() -> None:
    for raw in (OLD, {**OLD, "min_colourfulness": None}):
        t = QualityThresholds.from_dict(raw)
        assert t.min_colourfulness == -math.inf
        assert {k: getattr(t, k) for k in OLD} == OLD
        colourless = ImageFeatures(450, 1.33, 150.0, 30.0, 50.0, colourfulness=0.0)
        assert check_content(colourless, t) is None


def test_thresholds_round_trip_through_json() -> None:
    """-inf is written as null (``jsonable``) and read back as -inf; a number as itself."""
    for value in (-math.inf, 10.3):
        t = QualityThresholds.from_dict({**OLD, "min_colourfulness": value})
        back = QualityThresholds.from_dict(json.loads(json.dumps(jsonable(t.to_dict()))))
        assert back == t
    with pytest.raises(ValueError, match="min_colourfulness"):
        QualityThresholds.from_dict({**OLD, "min_colourfulness": "grey"})
    assert QualityThresholds.from_dict(OLD).replace(min_colourfulness=5.0).min_colourfulness == 5


def test_colourless_is_checked_after_uniform_and_before_underexposed() -> None:
    t = QualityThresholds(1, 100.0, 5.0, 60.0, 230.0, 5.0, min_colourfulness=TRAINING_LIKE)
    fine = dict(short_side=450, aspect=1.33, brightness=150.0, contrast=30.0, sharpness=50.0)
    cases = {
        UNIFORM: {"contrast": 1.0, "colourfulness": 0.0, "brightness": 10.0},
        COLOURLESS: {"colourfulness": 0.0, "brightness": 10.0, "sharpness": 0.1},
        UNDEREXPOSED: {"colourfulness": 20.0, "brightness": 10.0, "sharpness": 0.1},
        BLURRED: {"colourfulness": 20.0, "sharpness": 0.1},
    }
    for code, changed in cases.items():
        refusal = check_content(ImageFeatures(**{**fine, **changed}), t)  # type: ignore[arg-type]
        assert refusal is not None and refusal.code == code, (code, refusal)
    order = list(REASON_CODES)
    assert order.index(UNIFORM) + 1 == order.index(COLOURLESS) == order.index(UNDEREXPOSED) - 1


def test_a_greyscale_jpeg_stays_grey_through_decode(photos: list[np.ndarray]) -> None:
    """What the gateway measures: a greyscale photo saved as an RGB JPEG decodes to R = G = B."""
    from contracts.images import decode_image

    ok, data = cv2.imencode(".jpg", cv2.cvtColor(grey(photos[1]), cv2.COLOR_RGB2BGR))
    assert ok
    decoded = decode_image(data.tobytes(), 10**8)
    assert features(decoded.rgb).colourfulness < 1.0
