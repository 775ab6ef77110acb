"""A real 2-trial Optuna search over real fits; the best configuration is a valid fit config."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from contracts.errors import ConfigError
from tests.wandb_records import wandb_run
from training.cli import main as cli_main
from training.search import SearchConfig, run_search

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_base(tmp_path: Path, ham_dir: Path) -> Path:
    """configs/compact_cnn.yaml shrunk to seconds: 48x64 images, 4 per class, 2+2 batches."""
    base = yaml.safe_load((ROOT / "configs" / "compact_cnn.yaml").read_text())
    base["trainer"].update(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=2,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path / "unused"),
    )
    base["trainer"]["logger"]["init_args"].update(save_dir=str(tmp_path), log_model=False)
    base["model"]["image_size"] = [48, 64]
    base["data"].update(data_dir=str(ham_dir), limit_per_class=4, num_workers=0, batch_size=16)
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def _runs(tmp_path: Path) -> list[dict]:
    return [wandb_run(d) for d in sorted((tmp_path / "wandb").glob("offline-run-*"))]


def test_two_trial_search_writes_a_fit_config(tmp_path, tiny_base, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    config = SearchConfig(
        base_config=str(tiny_base),
        study_name="tiny",
        n_trials=2,
        output=str(tmp_path / "best.yaml"),
        runs_dir=str(tmp_path / "runs"),
        space={
            "model.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
            "data.class_weighting": {"type": "categorical", "choices": ["none", "inverse"]},
            "model.image_size": {"type": "categorical", "choices": [[48, 64], [36, 48]]},
        },
    )
    flags = torch.are_deterministic_algorithms_enabled()
    try:
        study, path = run_search(config)
    finally:
        torch.use_deterministic_algorithms(flags)
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 2 and study.best_value == max(t.value for t in trials)
    best = yaml.safe_load(path.read_text())
    values = study.best_trial.user_attrs["values"]
    assert best["model"]["lr"] == values["model.lr"]
    assert best["model"]["image_size"] == values["model.image_size"]
    assert best["data"]["class_weighting"] == values["data.class_weighting"]
    assert best["data"]["data_dir"] == yaml.safe_load(tiny_base.read_text())["data"]["data_dir"]
    # Each trial's own checkpoint holds what was sampled.
    for t in trials:
        ckpt = Path(t.user_attrs["run_dir"]) / "checkpoints" / "best.ckpt"
        hp = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
        assert hp["lr"] == t.user_attrs["values"]["model.lr"]
    # The written file is a complete config for `fit`.
    with pytest.raises(SystemExit) as done:
        cli_main(["fit", "--config", str(path), "--print_config"])
    assert done.value.code in (0, None)
    runs = _runs(tmp_path)
    assert len(runs) == 2 and {r.get("run_group") for r in runs} == {"tiny"}
    assert {r.get("job_type") for r in runs} == {"search"}


def test_bad_search_files_are_named(tmp_path, tiny_base):
    bad = tmp_path / "s.yaml"
    bad.write_text(yaml.safe_dump({"base_config": str(tiny_base), "space": {"model.lr": {}}}))
    with pytest.raises(ConfigError, match=re.escape("space.model.lr needs type")):
        SearchConfig.load(bad)
    bad.write_text(yaml.safe_dump({"base_config": "nope.yaml", "space": {}}))
    with pytest.raises(ConfigError, match="does not exist"):
        SearchConfig.load(bad)
    assert SearchConfig.load(ROOT / "configs" / "search.yaml").n_trials >= 1


def test_pruning_callback_stops_a_trial_below_the_median(monkeypatch):
    import lightning as L

    import training.search as search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2)
    )
    for value in (0.6, 0.7):  # two finished trials that reached 0.6 and 0.7 at epoch 0
        done = study.ask()
        done.report(value, step=0)
        study.tell(done, value)
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    callback = search.TrialPruning()
    for value, pruned in ((0.9, False), (0.2, True)):
        monkeypatch.setattr(search, "_ACTIVE_TRIAL", study.ask())
        callback.pruned, trainer.should_stop = False, False
        trainer.callback_metrics["val/balanced_accuracy"] = torch.tensor(value)
        callback.on_validation_end(trainer, None)
        assert callback.pruned is pruned and trainer.should_stop is pruned
