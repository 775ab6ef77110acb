"""``make bench-gpu`` has never run on a GPU here: every path of it runs on the CPU with
``--device cpu`` (toy sizes), so the script a GPU machine will run is known to work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_serving import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.triton]


def test_every_path_runs_on_the_cpu(tmp_path: Path, ham_dir: Path, real_lesions_dir: Path) -> None:
    out = tmp_path / "gpu.md"
    env_cmd = [sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--out", str(out)]
    run = subprocess.run(
        env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "HAM10000_DIR": str(ham_dir),
             "REAL_LESIONS_DIR": str(real_lesions_dir), "WANDB_MODE": "offline"},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("Device: CPU dry run")
    assert "| bf16 autocast |" in text and "| ratio bf16 / fp32 |" in text
    assert "`python -m training export`" in text  # fit and export ran
    rows = [line.split("|") for line in text.splitlines() if "| gateway + Triton |" in line]
    assert [r[1].strip() for r in rows] == ["1", "8"]  # both concurrency levels served
    assert all(r[6].strip() == "0" for r in rows), rows  # no errors


def test_without_cuda_it_says_what_to_run() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 2 and "--device cpu" in run.stderr
