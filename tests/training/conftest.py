"""Fixtures for training tests: small real data sets built from the HAM10000 folder."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from contracts.labels import CLASSES


def copy_ham_subset(ham_dir: Path, dest: Path, lesions_per_class: int = 4) -> list[dict]:
    """Copy the first ``lesions_per_class`` lesions of each class (all their images) from the
    real HAM10000 folder into ``dest`` in the official two-folder layout
    (``HAM10000_images_part_1`` / ``_part_2``, alternating) with its metadata CSV.

    Returns the copied metadata rows as read from the real CSV.
    """
    with open(ham_dir / "HAM10000_metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lesions = {c: sorted({r["lesion_id"] for r in rows if r["dx"] == c}) for c in CLASSES}
    chosen = {lesion for c in CLASSES for lesion in lesions[c][:lesions_per_class]}
    kept = [r for r in rows if r["lesion_id"] in chosen]
    for i, row in enumerate(kept):
        folder = dest / f"HAM10000_images_part_{1 + i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(ham_dir / "images" / f"{row['image_id']}.jpg", folder)
    with open(dest / "HAM10000_metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    return kept


@pytest.fixture
def small_ham(tmp_path: Path, ham_dir: Path) -> tuple[Path, list[dict]]:
    """A fresh HAM10000-layout copy of 4 real lesions per class (tests may damage it)."""
    root = tmp_path / "ham"
    return root, copy_ham_subset(ham_dir, root)
