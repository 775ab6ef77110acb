"""The model card of an exported version: every figure from the evaluation that exported it or
from its metadata.json, the fixed parts (use, limits) present; written by evaluate --export and
logged to W&B with the model."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from contracts.labels import CLASSES
from contracts.metadata import METADATA_FILE, read_metadata
from contracts.repository import MODEL_CARD_FILE
from tests.wandb_records import wandb_records
from training.__main__ import main as training_main
from training.evaluation import model_card, scoring


def section(card: str, title: str) -> str:
    return card.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize(("version", "variant"), [("1", "cnn"), ("2", "tta")])
def test_card_holds_the_evaluation_of_the_exported_variant(
    ev, repository: Path, version: str, variant: str
) -> None:
    meta = read_metadata(repository / version / METADATA_FILE)
    card = model_card.render(ev, variant, meta)
    sc = ev.scores[variant]
    assert card.startswith(f"# Model card: {meta.name} version {meta.version}")
    assert "**not a medical device**" in card and f"variant: **{variant}**" in card
    ba = sc.balanced_accuracy
    # The balanced accuracy of the class the version names, by the rule its metadata.json holds.
    rule = meta.decision
    words = "most probable one" if rule is None else f"to the power {rule['tau']:.2f}"
    assert re.search(
        rf"^\| balanced accuracy \([^|]*{words}[^|]*\) \| "
        rf"{ba.estimate:.3f} \[{ba.low:.3f}, {ba.high:.3f}\] \|$",
        card,
        re.M,
    ), card
    argmax = sc.balanced_accuracy_argmax.estimate
    assert f"| balanced accuracy of the plain argmax | {argmax:.3f} |" in card
    assert f"| macro AUROC (one class vs the rest) | {sc.auroc_macro:.3f} |" in card
    assert f"{sc.ece:.3f} |" in section(card, "Evaluation")
    # Per class: counted here from the variant's own probabilities and the rule in metadata.json.
    probs = ev.variants[variant].test
    if rule is None:
        pred = probs.argmax(axis=1)
    else:
        priors = np.array([rule["class_priors"][c] for c in CLASSES])
        pred = np.argmax(np.log(probs) - rule["tau"] * np.log(priors), axis=1)
    labels = ev.labels
    row = r"^\| (\w+)(?: \(malignant\))? \| [^|]+ \| (\d+) \| ([\d.]+|\u2013) \|"
    rows = re.findall(row, section(card, "Evaluation"), re.M)
    assert [r[0] for r in rows] == list(CLASSES)
    for i, (_, cases, sens) in enumerate(rows):
        assert int(cases) == int((labels == i).sum())
        if int(cases):
            assert float(sens) == pytest.approx(
                ((pred == i) & (labels == i)).sum() / int(cases), abs=5e-4
            )
    # The operating points are the version's own.
    for key, point in meta.thresholds.items():
        assert f"| {key} | {point['threshold']:.4f} |" in section(card, "Operating points")
    # Subgroups: each breakdown covers every evaluated case.
    groups = scoring.subgroups(ev.variants[variant].test, ev.cases, ev.variants[variant].points)
    for by in ("sex", "age band", "site"):
        assert groups[groups["by"] == by]["n"].sum() == len(ev.cases)
    assert section(card, "Subgroups").count("\n| sex |") == (groups["by"] == "sex").sum()
    assert "Dermoscopic photos only" in section(card, "Known limits")
    # The training split's make-up, counted here from the split the evaluation rebuilt.
    train = ev.settings["train_distribution"]
    assert train["images"] == sum(train["label"].values()) == sum(train["sex"].values())
    assert f"- Trained on {train['images']} images: " in section(card, "Data")
    assert f"akiec {train['label'].get('akiec', 0)}" in section(card, "Data")
    assert "rollback" in section(card, "Reporting a problem")
    if meta.gate:
        assert f"{meta.gate['ood']['threshold']:.1f}" in section(card, "What it refuses")


def test_evaluate_export_writes_the_card_and_logs_it_with_the_model(
    checkpoints: list[Path],
    real_lesions_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REAL_LESIONS_DIR", str(real_lesions_dir))  # the parity photos
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    repo = tmp_path / "repo"
    args = [
        "evaluate",
        "--model",
        str(checkpoints[0]),
        "--limit-per-class",
        "3",
        "--n-resamples",
        "20",
        "--out",
        str(tmp_path / "reports"),
        "--export",
        "cnn",
        "--repository",
        str(repo),
        "--no-gate",
    ]
    assert training_main(args) == 0
    out = capsys.readouterr().out
    (version,) = [p for p in (repo / "skin_lesion").iterdir() if p.is_dir()]
    card = version / MODEL_CARD_FILE
    assert f"model card: {card}" in out and card.read_text().startswith("# Model card:")
    # The run's folder, as printed (wandb keeps the folder of its first run in a process).
    runs = [Path(line.split(": ", 1)[1]) for line in out.splitlines() if "logged to W&B" in line]
    exported = [
        r
        for run in runs
        for r in wandb_records(run)
        if r["type"] == "artifact" and r["artifact"]["type"] == "model"
    ]
    (artifact,) = exported
    files = {e["path"] for e in artifact["artifact"]["manifest"]["contents"]}
    assert {MODEL_CARD_FILE, METADATA_FILE, "model.pt"} <= files, files
    assert os.environ["WANDB_MODE"] == "offline"
    assert np.isfinite(read_metadata(version / METADATA_FILE).temperature)


def test_a_fusion_version_s_card_says_it_reads_the_patient_s_fields(ev, repository: Path) -> None:
    from dataclasses import replace

    from contracts import clinical

    meta = read_metadata(repository / "1" / METADATA_FILE)
    fused = replace(meta, clinical=clinical.describe())
    for card, fusion in (
        (model_card.render(ev, "cnn", fused), True),
        (model_card.render_unevaluated(fused), True),
        (model_card.render(ev, "cnn", meta), False),
        (model_card.render_unevaluated(meta), False),
    ):
        network = section(card, "Model")
        assert ("age, sex and body site" in network) is fusion
        assert (f"`{clinical.ENCODING_VERSION}`" in network) is fusion
