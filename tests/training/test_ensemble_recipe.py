"""``python -m training ensemble``: an ensemble recipe as one command, on real fits of real
images (the compact CNN shrunk to a few steps), in child processes as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from contracts.errors import ConfigError
from training.ensemble_recipe import read_recipe

ROOT = Path(__file__).resolve().parents[2]


def _member(folder: Path, name: str, seed: int, epochs: int = 1) -> Path:
    """A member fit config: configs/compact_cnn.yaml shrunk to 2 steps an epoch at 48x64."""
    config = yaml.safe_load((ROOT / "configs" / "compact_cnn.yaml").read_text())
    config["seed_everything"] = seed
    config["trainer"].update(
        default_root_dir=str(folder / "runs" / name),
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=4,
        limit_test_batches=2,
        logger=False,
        enable_progress_bar=False,
    )
    config["model"]["image_size"] = [48, 64]
    config["data"].update(limit_per_class=4, num_workers=0, batch_size=16)
    config["checkpoint"]["save_last"] = True
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _recipe(folder: Path, members: list[Path], **extra: object) -> Path:
    recipe: dict[str, object] = {
        "name": "pair",
        "tta": True,
        "members": [str(m) for m in members],
        "evaluate": ["--limit-per-class", "4", "--n-resamples", "20", "--no-wandb"],
        **extra,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _run(folder: Path, ham_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HAM10000_DIR": str(ham_dir), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "training", "ensemble", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_one_command_fits_the_members_resumes_and_evaluates_the_average(
    tmp_path: Path, ham_dir: Path
) -> None:
    a = _member(tmp_path, "a", seed=0)
    b = _member(tmp_path, "b", seed=1, epochs=2)
    recipe = _recipe(tmp_path, [a, b])

    # b was interrupted after its first epoch: its first epoch's checkpoint, no result.
    first = subprocess.run(
        [sys.executable, "-m", "training", "fit", "--config", str(b), "--trainer.max_epochs=1"],
        cwd=tmp_path,
        env={**os.environ, "HAM10000_DIR": str(ham_dir), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    (tmp_path / "runs" / "b" / "summary.json").unlink()  # as if killed before the fit's end
    assert torch.load(tmp_path / "runs/b/checkpoints/last.ckpt", weights_only=False)["epoch"] == 0

    done = _run(tmp_path, ham_dir, "--config", str(recipe))
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert f"{a}: new" in out and f"{b}: interrupted" in out
    assert f"fit --config {b} --ckpt_path last" in out
    # b resumed: its second epoch ran on top of the first (not a fresh one-epoch fit)
    last_b = torch.load(tmp_path / "runs/b/checkpoints/last.ckpt", weights_only=False)
    assert last_b["epoch"] == 1
    for name in ("a", "b"):
        summary = json.loads((tmp_path / "runs" / name / "summary.json").read_text())
        assert "val" in summary and "test" in summary
    # the average of the two best checkpoints was evaluated, with the recipe's extra arguments
    metrics = json.loads((tmp_path / "reports" / "pair" / "metrics.json").read_text())
    assert Path(metrics["model"]).resolve() == (tmp_path / "runs/a/checkpoints/best.ckpt").resolve()
    assert metrics["variants"]["ensemble"]["name"] == "ensemble of 2"
    assert {"tta", "member:1"} <= set(metrics["variants"])
    assert metrics["settings"]["limit_per_class"] == 4

    # Run again: nothing is refitted, the evaluation runs again.
    before = {n: (tmp_path / f"runs/{n}/checkpoints/best.ckpt").stat().st_mtime_ns for n in "ab"}
    again = _run(tmp_path, ham_dir, "--config", str(recipe))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{a}: finished" in again.stdout and f"{b}: finished" in again.stdout
    assert "training fit" not in again.stdout and "training evaluate" in again.stdout
    after = {n: (tmp_path / f"runs/{n}/checkpoints/best.ckpt").stat().st_mtime_ns for n in "ab"}
    assert after == before


def test_a_failing_member_fit_stops_the_recipe_with_its_command(
    tmp_path: Path, ham_dir: Path
) -> None:
    bad = _member(tmp_path, "bad", seed=0)
    config = yaml.safe_load(bad.read_text())
    config["model"]["model_name"] = "no_such_network"
    bad.write_text(yaml.safe_dump(config))
    recipe = _recipe(tmp_path, [bad, _member(tmp_path, "b", seed=1)])
    done = _run(tmp_path, ham_dir, "--config", str(recipe))
    assert done.returncode == 2
    assert f"training fit --config {bad}` failed" in done.stderr
    assert not (tmp_path / "runs" / "b").exists()  # stopped at the first failure
    assert not (tmp_path / "reports").exists()


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path: Path, ham_dir: Path) -> None:
    recipe = _recipe(tmp_path, [_member(tmp_path, "a", 0), _member(tmp_path, "b", 1)])
    done = _run(tmp_path, ham_dir, "--config", str(recipe), "--dry-run", "--export")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("+ python")]
    assert len(lines) == 3 and lines[-1].endswith("--export ensemble")
    assert "--ensemble" in lines[-1] and "--limit-per-class 4" in lines[-1]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"members": ["one"]}, "at least two members"),
        ({"colour": 1}, "unknown keys ['colour']"),
        ({"evaluate": "--tta"}, "'evaluate' is a list"),
        ({"members": ["missing.yaml", "missing2.yaml"]}, "member missing.yaml"),
    ],
)
def test_malformed_recipes_are_refused_by_name(tmp_path: Path, change: dict, message: str) -> None:
    a, b = _member(tmp_path, "a", 0), _member(tmp_path, "b", 1)
    path = _recipe(tmp_path, [a, b])
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **change}))
    with pytest.raises(ConfigError) as err:
        read_recipe(path)
    assert message in str(err.value)


def test_members_that_share_a_run_folder_are_refused(tmp_path: Path) -> None:
    a = _member(tmp_path, "a", 0)
    twin = tmp_path / "twin.yaml"
    twin.write_text(a.read_text())
    with pytest.raises(ConfigError, match="both write to"):
        read_recipe(_recipe(tmp_path, [a, twin]))


def test_the_shipped_recipe_names_the_documented_members(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # member configs are read from the working folder, as fit reads them
    recipe = read_recipe(ROOT / "configs" / "ensemble_150.yaml")
    assert [m.config.name for m in recipe.members] == [
        "efficientnet_lite0_150_ema.yaml",
        "efficientnet_lite0_150_clinical_ema.yaml",
        "efficientnet_lite0_150_clinical.yaml",
    ]
    assert recipe.name == "ens150_ema3"
