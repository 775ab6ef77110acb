"""Shared fixtures: where the real data lives. Area-specific fixtures live in tests/<area>/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The gateway fixtures (Triton, PostgreSQL, live gateway) serve tests/serving and tests/reliability.
pytest_plugins = ["tests.fixtures_serving"]


def _data_dir(env: str, fallback: str) -> Path:
    path = Path(os.environ.get(env) or ROOT.parent / "shared" / "data" / fallback)
    if not path.is_dir():
        pytest.fail(f"{env} is not set and {path} does not exist: point {env} at the real data")
    return path


@pytest.fixture(scope="session")
def ham_dir() -> Path:
    """The real HAM10000-layout training set (metadata CSV + images)."""
    return _data_dir("HAM10000_DIR", "ham10000")


@pytest.fixture(scope="session")
def real_lesions_dir() -> Path:
    """28 full-size HAM10000 JPEGs with labels.csv: real uploads."""
    return _data_dir("REAL_LESIONS_DIR", "real_lesions")
