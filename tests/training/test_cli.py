"""``python -m training``: help, errors, extra commands, and a real short fit + test."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from contracts.labels import CLASSES
from contracts.metrics import metrics_from_confusion
from training import data
from training.__main__ import main as entry
from training.cli import main as cli_main
from training.module import LesionClassifier

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "compact_cnn.yaml"


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # LightningCLI warns when it is given args while sys.argv holds pytest's own.
    monkeypatch.setattr(sys, "argv", ["python -m training"])
    flags = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(flags, warn_only=warn_only)  # the config sets "warn"


def _quick(run_dir: Path, *extra: str) -> list[str]:
    """The default config, shrunk: 48x64 images, 8 training images per class, 3 steps."""
    return [
        "fit",
        f"--config={CONFIG}",
        "--model.image_size=[48, 64]",
        "--data.limit_per_class=8",
        "--data.num_workers=0",
        "--data.batch_size=32",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]


def test_help_lists_every_option_with_its_docs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo the help formatter's wrapping
    for option, doc in [
        ("--model.model_name", "a network from the ``models`` registry"),
        ("--model.lr", "peak learning rate of AdamW"),
        ("--model.label_smoothing", "cross-entropy label smoothing"),
        ("--model.image_size", "the data module resizes to it"),
        ("--data.limit_per_class", "cap on training images per class"),
        ("--data.class_weighting", "sqrt_inverse"),
        ("--wandb_extras.max_images", "misclassified images logged per evaluation epoch"),
        ("--checkpoint.monitor", ""),
        ("--early_stopping.patience", ""),
        ("--trainer.strategy", ""),
        ("--trainer.precision", ""),
    ]:
        assert option in out, option
        assert doc in out, doc
    # Linked: the model's image size is the only one to set.
    assert "--data.image_size" not in out


def test_top_level_help_names_the_extra_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    out = capsys.readouterr().out
    assert "python -m training {export,evaluate,search} --help" in " ".join(out.split())
    assert "{fit,validate,test,predict}" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.model_name=nope"], "error: unknown model 'nope'; registered models: "),
        (["--model.label_smoothing=1.5"], "error: label_smoothing must be in [0, 1)"),
        (["--data.data_dir=/no/such/folder"], "error: data folder /no/such/folder does not exist"),
    ],
)
def test_user_errors_exit_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert entry(_quick(tmp_path, *args)) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_the_module_entry_point_exits_2_on_a_user_error(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "training", *_quick(tmp_path, "--model.model_name=nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert "error: unknown model 'nope'" in run.stderr
    assert "Traceback" not in run.stderr


def test_extra_commands_are_dispatched(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        status = entry(["export", "--help"])
    except SystemExit as done:  # argparse's --help exits
        status = done.code
    assert status == 0
    assert "usage" in capsys.readouterr().out.lower()


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory, ham_dir: Path) -> Iterator[dict]:
    """One short fit (then test) on the real images through the CLI entry."""
    run_dir = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HAM10000_DIR", str(ham_dir))
        mp.setattr(sys, "argv", ["python -m training"])
        flags = torch.are_deterministic_algorithms_enabled()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            cli = cli_main(_quick(run_dir))
        torch.use_deterministic_algorithms(flags)
        yield {"cli": cli, "run_dir": run_dir, "stdout": out.getvalue()}


@pytest.mark.slow
def test_real_fit_writes_a_checkpoint_that_describes_itself(real_run: dict, ham_dir: Path) -> None:
    cli, run_dir = real_run["cli"], real_run["run_dir"]
    best = run_dir / "checkpoints" / "best.ckpt"
    assert cli.trainer.checkpoint_callback.best_model_path == str(best)
    raw = torch.load(best, map_location="cpu", weights_only=False)
    hp = raw["hyper_parameters"]
    assert (hp["model_name"], tuple(hp["image_size"])) == ("compact_cnn", (48, 64))
    assert raw["synthetic"] is False
    # The version of the data it was trained on, computed here independently.
    frame = data.validate(data.load_ham10000(ham_dir), str(ham_dir))
    assert raw["dataset_version"] == data.dataset_version(frame)
    assert raw["class_weights"] == pytest.approx(cli.datamodule.class_weights.tolist())

    loaded = LesionClassifier.load_from_checkpoint(best, map_location="cpu")
    assert loaded.hparams.image_size == (48, 64)
    assert loaded.dataset_version == raw["dataset_version"]
    assert (run_dir / "config_fit.yaml").is_file()


@pytest.mark.slow
def test_real_fit_then_test_summary(real_run: dict) -> None:
    cli, run_dir = real_run["cli"], real_run["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    splits = cli.datamodule.splits
    for stage in ("val", "test"):
        cm = summary[stage]["confusion_matrix"]
        # Every image of the split was evaluated, once.
        assert sum(map(sum, cm)) == len(splits[stage])
        expected = metrics_from_confusion(cm)
        for key in ("balanced_accuracy", "sensitivity_mel", "specificity_mel"):
            got, want = summary[stage]["metrics"][key], expected[key]
            assert got is None if math.isnan(want) else got == pytest.approx(want), key
        assert 0.0 <= summary[stage]["metrics"]["auroc_macro"] <= 1.0
    assert summary["test"]["checkpoint"] == summary["best_checkpoint"]
    assert summary["best_checkpoint"].endswith("best.ckpt")
    assert summary["hyperparameters"]["model_name"] == "compact_cnn"
    out = real_run["stdout"]
    assert "Validation, best epoch 0 (real data" in out and "Test (real data" in out
    assert "melanoma at argmax: sensitivity" in out
    assert f"summary: {run_dir / 'summary.json'}" in out


@pytest.mark.slow
def test_real_fit_logs_one_line_per_epoch(real_run: dict) -> None:
    summary = json.loads((real_run["run_dir"] / "summary.json").read_text())
    lines = [x for x in real_run["stdout"].splitlines() if x.startswith("epoch ")]
    assert len(lines) == 1  # one epoch, one line
    fields = lines[0].split("  ")
    assert fields[0] == "epoch 1/1"
    logged = dict(f.rsplit(" ", 1) for f in fields[1:] if f.startswith(("val/", "train/")))
    val_ba = summary["val"]["metrics"]["balanced_accuracy"]
    assert float(logged["val/balanced_accuracy"]) == pytest.approx(val_ba, abs=5e-4)
    assert "train/loss_epoch" in logged and "val/loss" in logged
    assert fields[-2].endswith(" img/s") and float(fields[-2].split()[0]) > 0
    assert fields[-1].startswith("epoch ") and "ETA" not in lines[0]  # the last epoch


@pytest.mark.slow
def test_test_subcommand_takes_the_image_size_from_the_checkpoint(
    real_run: dict, ham_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = real_run["run_dir"]
    monkeypatch.setenv("HAM10000_DIR", str(ham_dir))
    best = run_dir / "checkpoints" / "best.ckpt"
    cli = cli_main(
        [
            "test",
            f"--config={CONFIG}",  # says 72x96; the checkpoint was trained at 48x64
            f"--ckpt_path={best}",
            "--data.num_workers=0",
            "--trainer.limit_test_batches=2",
            f"--trainer.default_root_dir={run_dir}",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert cli.datamodule.image_size == (48, 64)
    assert cli.model.hparams.model_name == "compact_cnn"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"]["checkpoint"] == str(best)
    tested = sum(map(sum, summary["test"]["confusion_matrix"]))
    assert tested == 2 * cli.datamodule.hparams.batch_size


def test_environment_default_is_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    entry(_quick(tmp_path, "--model.model_name=nope"))  # fails fast, after the CLI set up
    assert os.environ["WANDB_MODE"] == "offline"


@pytest.mark.slow
def test_predict_writes_probabilities_per_image(
    real_run: dict, ham_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HAM10000_DIR", str(ham_dir))
    best = real_run["run_dir"] / "checkpoints" / "best.ckpt"
    cli = cli_main(
        [
            "predict",
            f"--config={CONFIG}",
            f"--ckpt_path={best}",
            "--data.num_workers=0",
            "--data.batch_size=16",
            "--trainer.limit_predict_batches=2",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
        ]
    )
    frame = pd.read_csv(tmp_path / "predictions.csv")
    test = cli.datamodule.splits["test"]
    assert len(frame) == 32
    assert frame["image_id"].tolist() == test["image_id"].head(32).tolist()
    assert frame["label"].tolist() == test["label"].head(32).tolist()
    probs = frame[[f"p_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert frame["predicted"].tolist() == [CLASSES[k] for k in probs.argmax(axis=1)]
