"""The out-of-distribution corpus: large enough, every kind, deterministic, and each degraded
kind measurably degraded relative to the real lesion photo it was made from."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from contracts.errors import DataError
from contracts.images import decode_image, read_image
from contracts.quality import luminance
from training.ood_corpus import (
    BLUR_SIGMA_FRACTION,
    DEGRADED,
    DEGRADED_KINDS,
    FAR,
    FAR_KINDS,
    STRIP,
    degraded,
    far_from_lesion,
    jpeg,
    main,
    sample_photos,
    to_rgb,
)


@pytest.fixture(scope="module")
def far() -> list:
    return far_from_lesion(seed=0)


@pytest.fixture(scope="module")
def photos(real_lesions_dir: Path) -> list[Path]:
    return sample_photos(real_lesions_dir, 3, seed=0)


@pytest.fixture(scope="module")
def damaged(photos: list[Path]) -> list:
    return degraded(photos, seed=0)


def sharpness(rgb: np.ndarray) -> float:
    return float(cv2.Laplacian(luminance(rgb), cv2.CV_32F).var())


def test_far_corpus_is_large_rgb_and_has_every_kind(far: list) -> None:
    assert len(far) >= 150
    assert {i.kind for i in far} == set(FAR_KINDS)
    assert {i.group for i in far} == {FAR}
    assert len({(i.kind, i.name) for i in far}) == len(far), "names repeat within a kind"
    for i in far:
        assert i.rgb.dtype == np.uint8 and i.rgb.ndim == 3 and i.rgb.shape[2] == 3, i.name
        assert i.rgb.flags.c_contiguous, i.name


def test_far_corpus_is_deterministic_and_seeded(far: list) -> None:
    again = far_from_lesion(seed=0)
    assert [(i.kind, i.name) for i in again] == [(i.kind, i.name) for i in far]
    assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(far, again, strict=True))
    other = {i.name: i.rgb for i in far_from_lesion(seed=1)}
    moved = [i.name for i in far if i.name not in other or not np.array_equal(i.rgb, other[i.name])]
    assert moved, "another seed changed nothing: the variants and frames are not seeded"


def test_far_kinds_are_what_they_say(far: list) -> None:
    spread = {i.name: float(luminance(i.rgb).std()) for i in far}
    uniform = [i.name for i in far if i.kind == "uniform"]
    assert uniform and all(spread[n] < 1e-3 for n in uniform)
    others = [i.name for i in far if i.kind != "uniform"]
    assert all(spread[n] > 1 for n in others), [n for n in others if spread[n] <= 1]
    pages = [i for i in far if i.kind == "text_page"]
    # Rendered text: the paper colour dominates, the ink covers a visible share.
    for page in pages:
        _, counts = np.unique(page.rgb.reshape(-1, 3), axis=0, return_counts=True)
        assert 0.5 < counts.max() / counts.sum() < 0.99, page.name


def test_to_rgb_matches_the_gateway_conversions() -> None:
    grey = to_rgb(np.array([[0, 128]], np.uint8))
    assert grey.shape == (1, 2, 3) and (grey[0, 1] == 128).all()
    assert to_rgb(np.array([[True, False]]))[0, 0].tolist() == [255, 255, 255]
    assert to_rgb(np.array([[0.5]]))[0, 0].tolist() == [128, 128, 128]
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255]]], np.uint8)
    # Transparent pixels on WHITE, as contracts.images decodes an RGBA upload.
    assert to_rgb(rgba).tolist() == [[[255, 255, 255], [10, 20, 30]]]


def test_degraded_has_every_kind_of_every_photo(photos: list[Path], damaged: list) -> None:
    assert {i.group for i in damaged} == {DEGRADED}
    for photo in photos:
        kinds = [i.kind for i in damaged if i.name.startswith(photo.stem)]
        assert sorted(kinds) == sorted(DEGRADED_KINDS), photo.stem


def test_degraded_kinds_really_are_degraded(photos: list[Path], damaged: list) -> None:
    for photo in photos:
        source = read_image(str(photo))
        mine = {i.kind: i for i in damaged if i.name.startswith(photo.stem)}
        blur = mine["gaussian_blur"]
        assert f"sigma{BLUR_SIGMA_FRACTION * min(source.shape[:2]):.1f}" in blur.name
        assert sharpness(blur.rgb) < 0.05 * sharpness(source), photo.stem
        brightness = float(luminance(source).mean())
        assert float(luminance(mine["overexposed_8x"].rgb).mean()) > max(240, brightness)
        assert float(luminance(mine["underexposed_8x"].rgb).mean()) < 0.5 * brightness
        for kind in ("crop_24x24", "crop_64x48"):
            width, height = (int(v) for v in kind.removeprefix("crop_").split("x"))
            crop = mine[kind].rgb
            assert crop.shape == (height, width, 3)
            # A window of the photo itself, pixel for pixel, away from the border.
            _, _, (x, y), _ = cv2.minMaxLoc(cv2.matchTemplate(source, crop, cv2.TM_SQDIFF))
            assert np.array_equal(source[y : y + height, x : x + width], crop), kind
            assert 0 < x < source.shape[1] - width and 0 < y < source.shape[0] - height
        assert mine[f"strip_{STRIP[0]}x{STRIP[1]}"].rgb.shape == (STRIP[1], STRIP[0], 3)
        q5 = mine["jpeg_q5"]
        assert q5.data is not None and q5.suffix == ".jpg"
        # The gateway's decoder reads the file's bytes as exactly these pixels.
        assert np.array_equal(decode_image(q5.data, 10**8).rgb, q5.rgb)
        fine, _ = jpeg(source, quality=90)
        error = np.abs(q5.rgb.astype(int) - source).mean()
        assert error > 3 * np.abs(fine.astype(int) - source).mean()


def test_degraded_is_deterministic_and_refuses_repeated_names(
    photos: list[Path], damaged: list
) -> None:
    again = degraded(photos, seed=0)
    assert [(i.kind, i.name) for i in again] == [(i.kind, i.name) for i in damaged]
    assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(damaged, again, strict=True))
    with pytest.raises(DataError, match="share file names"):
        degraded([photos[0], photos[0]])


def test_cli_writes_the_corpus(tmp_path: Path, real_lesions_dir: Path, far: list) -> None:
    out = tmp_path / "corpus"
    assert main([str(out), "--lesions", str(real_lesions_dir), "--n-lesions", "2"]) == 0
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(far) + 2 * len(DEGRADED_KINDS)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.suffix in (".png", ".jpg"))
    assert sorted(Path(r["file"]) for r in rows) == files
    for row in rows:
        path = Path(row["file"])
        assert path.parts[:2] == (row["group"], row["kind"])
        assert path.suffix == (".jpg" if row["kind"] == "jpeg_q5" else ".png")
    # PNG is lossless: the file holds the corpus's pixels.
    first = far[0]
    assert np.array_equal(read_image(str(out / FAR / first.kind / f"{first.name}.png")), first.rgb)
    assert main([str(tmp_path / "x"), "--lesions", str(tmp_path / "missing")]) == 2
