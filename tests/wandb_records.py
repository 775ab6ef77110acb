"""Read an offline W&B run back with wandb's own reader (shared by the tests that check runs).

``wandb leet inspect --json`` prints every record of a run's ``.wandb`` transaction log as one
JSON object a line: run, config, history, summary, files, artifact.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of the offline run in ``run_dir``."""
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wandb_run(run_dir: Path) -> dict:
    """The run record (id, job_type, group, tags) of the offline run in ``run_dir``."""
    return next(r["run"] for r in wandb_records(run_dir) if r["type"] == "run")
