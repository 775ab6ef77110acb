"""Shared fixtures: where the real data lives. Area-specific fixtures live in tests/<area>/.

Tests that use the real data (``ham_dir``, ``real_lesions_dir`` or any fixture built on them)
are marked ``real_data`` automatically. Without the data they are skipped, with the reason; CI
has it and sets ``REAL_DATA_REQUIRED=1`` (``.ci/run``), which turns a missing folder into a
failure, so the real-data tests cannot be skipped there unnoticed.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# The gateway fixtures (Triton, PostgreSQL, live gateway) serve tests/serving and tests/reliability;
# tests.fixtures_gate adds a version exported with the gate, on its own Triton.
pytest_plugins = ["tests.fixtures_serving", "tests.fixtures_gate"]
REAL_DATA_FIXTURES = frozenset({"ham_dir", "real_lesions_dir"})
HAM_METADATA = "HAM10000_metadata.csv"


def _data_dir(env: str, fallback: str, what: str) -> Path:
    """The folder ``env`` names, else ``../shared/data/<fallback>`` beside the repository."""
    named = os.environ.get(env)
    path = Path(named or ROOT.parent / "shared" / "data" / fallback)
    if path.is_dir():
        return path
    reason = f"{what} not found: set {env} to its folder ({path} does not exist)"
    if named or os.environ.get("REAL_DATA_REQUIRED") == "1":
        pytest.fail(reason)  # asked for and missing: a broken setup, not an absent data set
    pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs the real data, directly or through another fixture."""
    for item in items:
        if REAL_DATA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_data)


@pytest.fixture(scope="session")
def ham_dir() -> Path:
    """The real HAM10000-layout training set (metadata CSV + images)."""
    return _data_dir("HAM10000_DIR", "ham10000", "the HAM10000 folder")


@pytest.fixture(scope="session")
def real_lesions_dir() -> Path:
    """28 full-size HAM10000 JPEGs with labels.csv: real uploads."""
    return _data_dir("REAL_LESIONS_DIR", "real_lesions", "the full-size lesion photos")


@pytest.fixture(scope="session")
def ham_metadata(ham_dir: Path) -> list[dict[str, str]]:
    """The rows of the HAM10000 folder's metadata CSV: the data's own count, not a constant."""
    with open(ham_dir / HAM_METADATA, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def ham_image_size(ham_dir: Path, ham_metadata: list[dict[str, str]]) -> tuple[int, int]:
    """``(height, width)`` of the HAM10000 folder's images, read from the first one listed."""
    image_id = ham_metadata[0]["image_id"]
    path = next(p for p in ham_dir.rglob(f"{image_id}.*") if p.is_file())
    with Image.open(path) as img:
        width, height = img.size
    return height, width
