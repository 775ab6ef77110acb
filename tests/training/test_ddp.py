"""Scale-out is configuration: two CPU processes with DDP, metrics summed across them.

Run as a subprocess of ``python -m training`` (Lightning's launcher re-runs that command for
rank 1), so no process forks inside pytest.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.datamodule import LesionDataModule

ROOT = Path(__file__).resolve().parents[2]
SIZE = (48, 64)


@pytest.mark.slow
def test_fit_and_test_on_two_processes_sync_the_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HAM10000_DIR"}  # the synthetic set
    env |= {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DATA_DIR": str(tmp_path)}
    command = [
        sys.executable,
        "-m",
        "training",
        "fit",
        "--config=configs/compact_cnn.yaml",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        f"--model.image_size=[{SIZE[0]}, {SIZE[1]}]",
        "--data.num_workers=0",
        "--data.batch_size=16",
        "--data.limit_per_class=8",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "distributed_backend=gloo" in run.stderr  # really two processes, over gloo
    assert "All distributed processes registered. Starting with 2 processes" in run.stderr

    monkeypatch.delenv("HAM10000_DIR", raising=False)
    dm = LesionDataModule(image_size=SIZE, limit_per_class=8)
    dm.setup()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for stage in ("val", "test"):
        evaluated = sum(map(sum, summary[stage]["confusion_matrix"]))
        # Each process saw half of the split (DistributedSampler pads it to an even length);
        # rank zero's numbers cover both halves only if the states were summed across ranks.
        assert evaluated == 2 * math.ceil(len(dm.splits[stage]) / 2), stage
    assert summary["synthetic"] is True and summary["dataset_version"] == dm.dataset_version
    assert Path(summary["best_checkpoint"]).is_file()
    # W&B ran on rank zero only: one offline run.
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1
