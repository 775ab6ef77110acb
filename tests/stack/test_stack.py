"""``make run``'s job end to end: train, evaluate + export, real Triton, gateway, one real photo."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from serving.triton.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.triton
def test_stack_trains_exports_serves_and_answers(
    tmp_path: Path, real_lesions_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tiny run of the default configuration on the synthetic set, in a fresh working folder.
    config = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    config["trainer"].update(
        default_root_dir=str(tmp_path / "runs"),
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=2,
        logger=False,
    )
    config["model"]["image_size"] = [48, 64]
    config["data"].update(num_workers=0, limit_per_class=8, batch_size=16)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIN_")}
    env.pop("HAM10000_DIR", None)
    env.update(
        WANDB_MODE="offline",
        SKIN_RULES_PATH=str(ROOT / "configs" / "body_location_rules.yaml"),
        SKIN_DATABASE_URL=f"sqlite:///{tmp_path / 'predictions.db'}",
    )
    photo = sorted(real_lesions_dir.glob("*.jpg"))[0]
    cmd = [
        sys.executable,
        "-m",
        "tools.stack",
        "--config",
        "tiny.yaml",
        "--port",
        str(free_port()),
        "--triton-free-ports",  # Triton's own 8000-8002 may be another server's on this host
        "--check",
        str(photo),
    ]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "The stack is up" in out.stdout
    assert f"check: {photo.name} -> " in out.stdout
    meta = yaml.safe_load((tmp_path / "model_repository/skin_lesion/1/metadata.json").read_text())
    # The variant was chosen on validation (plain or TTA), and what was exported is that one.
    chosen = re.search(
        r"validation balanced accuracy: cnn [\d.]+, tta [\d.]+; exporting (\w+)", out.stdout
    )
    assert chosen, out.stdout[-3000:]
    assert ("tta" in meta) == (chosen.group(1) == "tta")
    assert meta["synthetic"] is True
    assert meta["thresholds"]["mel"]["threshold"] > 0  # the evaluation's operating point
    # A second run finds the config's exported model and does not train again.
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "tiny.yaml is exported as version 1: not training" in again.stdout
    assert not (tmp_path / "model_repository/skin_lesion/2").exists()

    # Another config (another input size, another run folder): trained, exported as version 2
    # and served; the stack answers with it.
    config["trainer"]["default_root_dir"] = str(tmp_path / "runs-other")
    config["model"]["image_size"] = [40, 56]
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(config))
    other = [*cmd[:4], "other.yaml", *cmd[5:]]
    other[other.index("--port") + 1] = str(free_port())
    done = subprocess.run(other, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "serving version 2 (other.yaml)" in done.stdout
    meta2 = yaml.safe_load((tmp_path / "model_repository/skin_lesion/2/metadata.json").read_text())
    assert meta2["input_size"] == [40, 56]
    assert "model version 2," in done.stdout.split(f"check: {photo.name} -> ", 1)[1]
