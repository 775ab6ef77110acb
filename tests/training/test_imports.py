"""Every evaluation and export module imports on its own, first, in a fresh interpreter: an
import cycle (sources -> export -> model card -> results -> sources) once broke
``import training.evaluation.sources`` while ``python -m training`` still worked, because the
CLI happened to import the cycle from another end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_IMPORTS = (
    "training.evaluation.sources",
    "training.evaluation.results",
    "training.evaluation.model_card",
    "training.evaluation.run",
    "training.export.cli",
)


@pytest.mark.parametrize("module", FIRST_IMPORTS)
def test_module_imports_first(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
