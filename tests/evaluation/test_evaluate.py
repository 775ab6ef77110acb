"""The evaluation end to end on real checkpoints and real HAM10000 images."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from contracts.labels import CLASSES
from tests.wandb_records import wandb_records
from training import data
from training.__main__ import main as training_main
from training.evaluation import thresholds as th
from training.evaluation.calibration import nll
from training.evaluation.config import EvaluationConfig
from training.evaluation.report import write
from training.evaluation.run import evaluate, promotion_check
from training.evaluation.sources import load_source
from training.export import LogProbabilities
from training.inference import predict

pytestmark = pytest.mark.slow


def test_rebuilds_the_recorded_split(ev, ham_dir, split_seed):
    splits = data.grouped_split(data.load_ham10000(ham_dir), seed=split_seed)
    evaluated = set(ev.cases.frame["image_id"])
    assert evaluated <= set(splits["test"]["image_id"])
    assert not set(ev.cases.frame["group"]) & set(splits["train"]["group"])
    assert (
        ev.settings["seed"] == split_seed and len(evaluated) == 7 * ev.settings["limit_per_class"]
    )


def test_every_row_is_scored_and_thresholds_are_chosen_on_validation(ev):
    assert {
        "majority",
        "demographic",
        "cnn_raw",
        "cnn",
        "rules",
        "tta",
        "member:1",
        "ensemble",
    } <= set(ev.scores)
    labels, val_labels = ev.cases.labels, ev.val_cases.labels
    for key, variant in ev.variants.items():
        for target in th.TARGETS:
            point = variant.points[target]
            sens, _spec = th.rates(
                th.scores(variant.val, target), th.positives(val_labels, target), point.threshold
            )
            assert sens >= 0.95 and sens == point.val_sensitivity, (key, target)
        assert variant.test.shape == (len(labels), 7)
        np.testing.assert_allclose(variant.test.sum(1), 1.0, atol=1e-6)


def _ba(labels: np.ndarray, named: np.ndarray) -> float:
    return float(np.mean([(named[labels == c] == c).mean() for c in np.unique(labels)]))


def _named(probs: np.ndarray, tau: float, priors: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.argmax(np.log(probs) - tau * np.log(priors), axis=1)


def test_each_row_names_its_class_by_a_rule_chosen_on_validation(ev):
    """The decision rule of each row: the tau of the grid with the best VALIDATION balanced
    accuracy (never worse there than the argmax), priors from the training split; the test
    balanced accuracy is the one of the class it names, the argmax's beside it."""
    counts = ev.settings["train_distribution"]["label"]  # the recorded training split's
    priors = np.array([counts.get(c, 0) + 1.0 for c in CLASSES])
    priors /= priors.sum()
    val_labels, labels = ev.val_cases.labels, ev.cases.labels
    for key, v in ev.variants.items():
        rule = v.decision
        np.testing.assert_allclose(rule.priors, priors)
        best = max(_ba(val_labels, _named(v.val, t, priors)) for t in np.arange(31) * 0.05)
        chosen = _ba(val_labels, _named(v.val, rule.tau, priors))
        assert chosen == pytest.approx(best) and chosen >= _ba(val_labels, v.val.argmax(1)), key
        sc = ev.scores[key]
        assert sc.balanced_accuracy.estimate == pytest.approx(
            _ba(labels, _named(v.test, rule.tau, priors))
        ), key
        assert sc.balanced_accuracy_argmax.estimate == pytest.approx(
            _ba(labels, v.test.argmax(1))
        ), key
        # What the rule adds, paired: the difference of the two, with a bootstrap interval.
        gain = sc.rule_gain
        assert gain.estimate == pytest.approx(
            _ba(labels, _named(v.test, rule.tau, priors)) - _ba(labels, v.test.argmax(1))
        ), key
        assert gain.n_resamples == ev.settings["n_resamples"] > 0, key
        assert gain.low <= gain.high, key


def test_hindsight_specificity_is_the_roc_at_the_target(ev):
    """The specificity where the test split's own sensitivity first reaches the target, read
    off sklearn's ROC curve; never below the operating point's where that one caught at least
    as many."""
    from sklearn.metrics import roc_curve

    labels = ev.cases.labels
    for key, v in ev.variants.items():
        sc = ev.scores[key]
        for target, hindsight, at_op in (
            ("mel", sc.specificity_mel_hindsight, sc.specificity_mel_op),
            ("malignant", sc.specificity_malignant_hindsight, sc.specificity_malignant_op),
        ):
            goal = v.points[target].target_sensitivity
            fpr, tpr, _ = roc_curve(
                th.positives(labels, target), th.scores(v.test, target), drop_intermediate=False
            )
            expected = 1.0 - fpr[np.argmax(tpr >= goal - 1e-12)]
            assert hindsight == pytest.approx(expected), (key, target)
            sens, _ = th.rates(
                th.scores(v.test, target), th.positives(labels, target), v.points[target].threshold
            )
            if sens >= goal:
                assert at_op <= hindsight, (key, target)


def test_the_argmax_option_names_the_most_probable_class(checkpoints):
    config = EvaluationConfig(limit_per_class=5, n_resamples=0, balanced_decision=False)
    plain = evaluate(checkpoints[0], config)
    for key, sc in plain.scores.items():
        assert plain.variants[key].decision.tau == 0.0
        assert sc.balanced_accuracy.estimate == sc.balanced_accuracy_argmax.estimate
        assert sc.rule_gain.estimate == 0.0


def test_calibration_lowers_validation_nll(ev):
    raw = ev.variants["cnn_raw"].val
    logits = np.log(np.clip(raw, 1e-30, None))
    labels = ev.val_cases.labels
    assert nll(logits, labels, ev.temperature) <= nll(logits, labels, 1.0)
    # Temperature never changes the decision.
    assert (ev.variants["cnn"].test.argmax(1) == ev.variants["cnn_raw"].test.argmax(1)).all()
    # TTA's mean of calibrated views gets its own temperature: the one that minimises the
    # validation NLL of the mean's logarithm (tta.val = softmax(log(mean) / T)).
    tta = ev.variants["tta"]
    mean_logits = tta.temperature * np.log(np.clip(tta.val, 1e-30, None))
    assert tta.temperature != 1.0
    assert nll(mean_logits, labels, tta.temperature) < nll(mean_logits, labels, 1.0)
    # A minimum of the search (bounded at T = 20, which these barely trained test models reach).
    assert nll(mean_logits, labels, tta.temperature) <= nll(
        mean_logits, labels, 0.8 * tta.temperature
    )


def test_ensemble_is_the_mean_of_its_calibrated_members(ev):
    members = (ev.variants["cnn"].test, ev.variants["member:1"].test)
    np.testing.assert_allclose(ev.variants["ensemble"].test, np.mean(members, axis=0))


def test_report_files_and_wandb_run(ev, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    import wandb

    wandb.teardown()  # an earlier run in this process fixed wandb's settings (its dir) for good
    report = write(ev, tmp_path / "reports")
    text = report.read_text()
    for sc in ev.scores.values():
        assert sc.name in text
    for png in ("confusion", "roc", "reliability", "operating_point", "confident_wrong"):
        assert (report.parent / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({png}.png)" in text
    metrics = json.loads((report.parent / "metrics.json").read_text())
    assert metrics["variants"]["cnn"]["thresholds"]["mel"]["threshold"] == pytest.approx(
        ev.variants["cnn"].points["mel"].threshold
    )
    cnn = ev.scores["cnn"]
    assert metrics["variants"]["cnn"]["metrics"]["specificity_mel_hindsight"] == pytest.approx(
        cnn.specificity_mel_hindsight
    )
    row = f"| {cnn.name} | {cnn.specificity_mel_op:.3f} / {cnn.specificity_mel_hindsight:.3f} |"
    assert row in text  # the confidence's cost, per variant
    saved = np.load(report.parent / "predictions.npz")
    np.testing.assert_allclose(saved["probs_cnn"], ev.variants["cnn"].test)
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    records = wandb_records(run_dir)
    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["job_type"] == "evaluation"
    logged = {k for r in records if r["type"] == "history" for k in _keys(r)}
    assert {"evaluation/comparison", "evaluation/operating_point"} <= logged


def _keys(record: dict) -> set[str]:
    return {key.split(".")[0] for key in record["history"]["item"]}


def test_evaluates_a_csv_of_its_own_with_validation_from_the_recorded_split(
    ev, checkpoints, real_lesions_dir, tmp_path
):
    table = pd.read_csv(real_lesions_dir / "labels.csv")
    table["path"] = [f"{i}.jpg" for i in table["image_id"]]  # relative to the CSV's folder
    own = tmp_path / "cases.csv"
    table.to_csv(own, index=False)
    for name in table["path"]:
        (tmp_path / name).symlink_to(real_lesions_dir / name)
    limit = ev.settings["limit_per_class"]
    other = evaluate(
        checkpoints[0], EvaluationConfig(data=own, limit_per_class=limit, n_resamples=20)
    )
    assert set(other.cases.frame["image_id"]) == set(table["image_id"])
    assert set(other.cases.frame["group"]) == set(table["lesion_id"])
    assert other.split == str(own)
    # Validation (thresholds, temperature) is the recorded split's, as for the test split.
    assert other.variants["cnn"].points == ev.variants["cnn"].points
    assert other.temperature == pytest.approx(ev.temperature)


@pytest.mark.parametrize(("which", "version"), [("cnn", 1), ("tta", 2), ("ensemble", 3)])
def test_exported_model_gives_the_evaluated_probabilities(ev, repository, which, version):
    folder = repository / str(version)
    meta = json.loads((folder / "metadata.json").read_text())
    source = load_source(folder)
    assert isinstance(source.logits, LogProbabilities)
    served = predict(source.logits.model, ev.cases.frame, source.input_size)
    np.testing.assert_allclose(served, ev.variants[which].test, atol=2e-5)
    for target in th.TARGETS:
        assert meta["thresholds"][target]["threshold"] == pytest.approx(
            ev.variants[which].points[target].threshold
        )
        assert meta["thresholds"][target]["target_sensitivity"] == 0.95
    # The decision rule chosen on validation for exactly these outputs (none: the argmax).
    rule = ev.variants[which].decision
    if rule.tau == 0:
        assert "decision" not in meta
    else:
        assert meta["decision"]["tau"] == rule.tau and meta["decision"]["rule"] == "balanced"
        assert [meta["decision"]["class_priors"][c] for c in CLASSES] == list(rule.priors)
    # Drift monitoring's reference: the exported model's argmax on validation images.
    assert sum(meta["reference"]["features"]["predicted_class"]["counts"]) > 0
    if which == "cnn":
        assert meta["temperature"] == pytest.approx(ev.temperature)
    if which == "tta":
        assert meta["temperature"] == pytest.approx(ev.variants["tta"].temperature)
        assert meta["tta"]["temperature_after_averaging"] == meta["temperature"]
        assert meta["tta"]["temperature"] == pytest.approx(ev.temperature)
    if which == "ensemble":
        assert [m["path"] for m in meta["ensemble"]["members"]] == [
            str(m.path) for m, _ in ev.members
        ]


def test_gate_compares_versions_on_the_same_lesions(repository, ev):
    config = EvaluationConfig(limit_per_class=ev.settings["limit_per_class"], n_resamples=100)
    same = promotion_check(repository / "1", repository / "1", config)
    assert same.promote and all(c.difference == 0 for c in same.checks)
    assert all(c.diff_low == c.diff_high == 0 for c in same.checks)
    tta_vs_cnn = promotion_check(repository / "2", repository / "1", config)
    expected = ev.scores["tta"].balanced_accuracy.estimate - (
        ev.scores["cnn"].balanced_accuracy.estimate
    )
    check = next(c for c in tta_vs_cnn.checks if c.metric == "balanced_accuracy")
    assert check.difference == pytest.approx(expected, abs=1e-9)


def test_cli_reports_and_refuses_bad_input(checkpoints, tmp_path, capsys):
    status = training_main(["evaluate", "--model", str(tmp_path / "missing.ckpt")])
    assert status == 2 and "neither a checkpoint" in capsys.readouterr().err
    status = training_main(["evaluate", "--model", str(checkpoints[0]), "--export", "tta"])
    assert status == 2 and "--export tta needs --tta" in capsys.readouterr().err
    args = [
        "evaluate",
        "--model",
        str(checkpoints[0]),
        "--limit-per-class",
        "3",
        "--n-resamples",
        "20",
        "--out",
        str(tmp_path),
        "--no-wandb",
        "--name",
        "cli",
    ]
    assert training_main(args) == 0
    assert "balanced accuracy" in capsys.readouterr().out
    assert (tmp_path / "cli" / "report.md").is_file()


def test_cli_compares_with_the_served_version(repository, ev, tmp_path, capsys):
    config = EvaluationConfig(limit_per_class=5, n_resamples=50)
    gate = promotion_check(repository / "2", repository / "1", config)
    args = [
        "evaluate",
        "--model",
        str(repository / "2"),
        "--compare",
        "served",
        "--repository",
        str(repository.parent),
        "--limit-per-class",
        "5",
        "--n-resamples",
        "50",
        "--out",
        str(tmp_path),
        "--no-wandb",
    ]
    status = training_main(args)
    out = capsys.readouterr().out
    assert status == (0 if gate.promote else 3)
    assert gate.summary() in out  # version 1 is the served one: the first export
    report = (tmp_path / "skin_lesion_v2" / "report.md").read_text()
    assert "## Promotion gate" in report and "skin_lesion_v1" in report
