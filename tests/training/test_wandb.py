"""A short fit with the W&B logger offline, read back with wandb's own reader.

``wandb leet inspect --json`` (wandb >= 0.2x) prints every record of a run's ``.wandb``
transaction log as one JSON object a line: run, config, history, summary, files, artifact.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from contracts.labels import CLASSES
from tests.wandb_records import wandb_records
from training.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "compact_cnn.yaml"


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A fit + test on the synthetic set with the default config's W&B logger."""
    tmp = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HAM10000_DIR", raising=False)
        mp.delenv("WANDB_MODE", raising=False)  # the CLI's default must be offline
        mp.setenv("WANDB_SILENT", "true")
        # Artifacts are staged (copied) under the W&B data dir until synced: keep it here.
        mp.setenv("WANDB_DATA_DIR", str(tmp / "wandb-data"))
        mp.setenv("WANDB_CACHE_DIR", str(tmp / "wandb-cache"))
        mp.setattr(sys, "argv", ["python -m training"])
        flags = torch.are_deterministic_algorithms_enabled()
        cli = cli_main(
            [
                "fit",
                f"--config={CONFIG}",
                "--model.image_size=[48, 64]",
                "--data.num_workers=0",
                "--data.batch_size=32",
                "--trainer.max_epochs=1",
                "--trainer.limit_train_batches=3",
                f"--trainer.default_root_dir={tmp / 'run'}",
                f"--trainer.logger.init_args.save_dir={tmp}",
                "--trainer.enable_progress_bar=false",
                "--wandb_extras.max_images=6",
            ]
        )
        torch.use_deterministic_algorithms(flags)
    (run_dir,) = (tmp / "wandb").glob("offline-run-*")
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    return {"cli": cli, "run_dir": run_dir, "records": wandb_records(run_dir), "summary": summary}


def _merged(records: list[dict], kind: str) -> dict:
    """Config or summary updates of the whole run, in order."""
    merged: dict = {}
    for r in records:
        if r["type"] == kind:
            merged.update(r[kind].get("update", {}))
        elif r["type"] == "run" and kind == "config":
            merged.update(r["run"].get("config", {}).get("update", {}))
    return merged


def _history_item(records: list[dict], key: str) -> dict:
    """The flattened fields of the first history row that logged ``key``."""
    for r in records:
        item = r.get("history", {}).get("item", {})
        fields = {k[len(key) + 1 :]: v for k, v in item.items() if k.startswith(key + ".")}
        if fields:
            return fields
    raise AssertionError(f"{key} was never logged")


@pytest.mark.slow
def test_run_is_offline_and_tagged_with_the_data(offline_run: dict) -> None:
    records, dm = offline_run["records"], offline_run["cli"].datamodule
    runs = [r["run"] for r in records if r["type"] == "run"]
    assert runs[-1]["display_name"] == "compact_cnn" and runs[-1]["project"] == "skin-lesion"
    assert "synthetic" in runs[-1]["tags"]
    assert any(
        r["type"] == "telemetry" and r["telemetry"]["feature"].get("offline") for r in records
    )
    config = _merged(records, "config")
    assert config["dataset_version"] == dm.dataset_version
    assert config["synthetic"] is True
    assert config["model_name"] == "compact_cnn" and config["lr"] == pytest.approx(0.002)
    assert config["cli"]["model"]["image_size"] == [48, 64]  # the full CLI config


@pytest.mark.slow
def test_summary_metrics_match_the_run_summary(offline_run: dict) -> None:
    wb, ours = _merged(offline_run["records"], "summary"), offline_run["summary"]
    for key in ("balanced_accuracy", "auroc_macro", "sensitivity_mel", "specificity_mel"):
        assert wb[f"test/{key}"] == pytest.approx(ours["test"]["metrics"][key]), key
        # One epoch: the last validation logged is the best one.
        assert wb[f"val/{key}"] == pytest.approx(ours["val"]["metrics"][key]), key


@pytest.mark.slow
def test_per_class_table_and_confusion_matrix(offline_run: dict) -> None:
    records, run_dir, ours = offline_run["records"], offline_run["run_dir"], offline_run["summary"]
    table_ref = _history_item(records, "val/per_class")
    assert table_ref["_type"] == "table-file"
    table = json.loads((run_dir / "files" / table_ref["path"]).read_text())
    assert table["columns"] == ["class", "sensitivity", "specificity", "precision", "f1", "support"]
    expected = [[r[c] for c in table["columns"]] for r in ours["val"]["per_class"]]
    assert [row[0] for row in table["data"]] == list(CLASSES)
    for row, want in zip(table["data"], expected, strict=True):
        for got, value in zip(row, want, strict=True):  # an undefined ratio is null in both
            exact = value is None or isinstance(value, str)
            assert got == (value if exact else pytest.approx(value))

    cm_ref = _history_item(records, "val/confusion_matrix_table")
    cm = json.loads((run_dir / "files" / cm_ref["path"]).read_text())
    assert cm["columns"] == ["Actual", "Predicted", "nPredictions"]
    counts = {(a, p): n for a, p, n in cm["data"]}
    ours_cm = ours["val"]["confusion_matrix"]
    for i, actual in enumerate(CLASSES):
        for j, predicted in enumerate(CLASSES):
            assert counts[(actual, predicted)] == ours_cm[i][j]
    assert sum(counts.values()) == len(offline_run["cli"].datamodule.splits["val"])


@pytest.mark.slow
def test_misclassified_images_carry_true_and_predicted_labels(offline_run: dict) -> None:
    records, run_dir = offline_run["records"], offline_run["run_dir"]
    val = offline_run["cli"].datamodule.splits["val"].set_index("image_id")
    images = _history_item(records, "val/misclassified")
    assert images["_type"] == "images/separated"
    assert images["count"] == len(images["captions"]) == 6
    for caption, filename in zip(images["captions"], images["filenames"], strict=True):
        image_id, rest = caption.split(": ")
        true, predicted = rest.removeprefix("true ").split(" (p=")[0].split(", predicted ")
        assert val.loc[image_id, "label"] == true  # the caption names the right image
        assert true != predicted
        assert (run_dir / "files" / filename).stat().st_size > 0


@pytest.mark.slow
def test_best_checkpoint_is_a_model_artifact(offline_run: dict) -> None:
    best = Path(offline_run["cli"].trainer.checkpoint_callback.best_model_path)
    artifacts = [r["artifact"] for r in offline_run["records"] if r["type"] == "artifact"]
    models = [a for a in artifacts if a["type"] == "model"]
    assert len(models) == 1 and "best" in models[0]["aliases"]
    (entry,) = models[0]["manifest"]["contents"]
    assert entry["path"] == "model.ckpt"
    md5 = base64.b64encode(hashlib.md5(best.read_bytes()).digest()).decode()
    assert entry["digest"] == md5  # the very file ModelCheckpoint kept
    # The checkpoint names its W&B run, for export's metadata.
    run_id = next(r["run"]["run_id"] for r in offline_run["records"] if r["type"] == "run")
    assert torch.load(best, map_location="cpu", weights_only=False)["wandb_run_id"] == run_id
