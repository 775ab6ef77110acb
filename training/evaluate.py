"""``python -m training evaluate``: the evidence behind a model and the decisions it ships with.

    python -m training evaluate --model runs/x/checkpoints/best.ckpt [--split test] [--tta]
        [--ensemble OTHER.ckpt ...] [--compare model_repository/skin_lesion/3] [--export cnn]

On one split (or a CSV / HAM10000-layout folder of its own) it scores, side by side, the
majority class, a no-image heuristic (body site, age band, sex), the CNN before and after
temperature scaling, the CNN with the body-location rules, and on request TTA, an ensemble
and another model. The referral thresholds on P(mel) and P(akiec+bcc+mel) are chosen on the
VALIDATION split to reach the target sensitivity, and reported where they land on the
evaluated cases. Intervals resample lesions. It writes ``reports/<name>/report.md`` with its
figures, ``metrics.json`` and ``predictions.npz``, logs the same to an offline W&B run
(job_type ``evaluation``) and, with ``--export``, writes a new model version with the
temperature and thresholds inside.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contracts.errors import ConfigError
from contracts.rules import load_rules
from training.evaluation import scoring
from training.evaluation import thresholds as th
from training.evaluation.baselines import DemographicBaseline, MajorityBaseline, label_indices
from training.evaluation.bootstrap import N_RESAMPLES, Interval
from training.evaluation.calibration import apply_temperature, fit_temperature
from training.evaluation.promotion import DEFAULT_TOLERANCES, GateDecision, check_promotion
from training.evaluation.sources import (
    ModelSource,
    load_cases,
    load_source,
    predict,
    rebuild_split,
)

log = logging.getLogger(__name__)
RULES_PATH = Path(__file__).resolve().parents[1] / "configs" / "body_location_rules.yaml"
EXPORTABLE = ("cnn", "tta", "ensemble")


@dataclass
class Variant:
    """One row of the comparison: probabilities on validation and on the evaluated cases.

    ``key``: majority, demographic, cnn_raw (uncalibrated / version as exported), cnn (the
    model as it would ship: calibrated), rules, tta, member:<i>, ensemble, compare.
    ``points``: the referral thresholds; chosen on ``val`` unless the model brought its own.
    """

    name: str
    key: str
    val: np.ndarray
    test: np.ndarray
    points: dict[str, th.OperatingPoint] | None = None


@dataclass
class Evaluation:
    """Everything the report shows; built by :func:`evaluate`."""

    name: str
    source: ModelSource
    split: str
    cases: scoring.Cases
    val_cases: scoring.Cases
    settings: dict[str, Any]
    temperature: float
    variants: dict[str, Variant]
    scores: dict[str, scoring.Score]
    differences: dict[str, dict[str, Interval]]  # variant key -> metric -> (variant - cnn)
    notes: list[str] = field(default_factory=list)
    gate: GateDecision | None = None
    members: list[tuple[ModelSource, float]] = field(default_factory=list)  # (model, T)

    @property
    def labels(self) -> np.ndarray:
        return self.cases.labels


def _stored_points(source: ModelSource) -> dict[str, th.OperatingPoint] | None:
    """A version's own thresholds from metadata.json, when it has both targets."""
    stored = source.thresholds
    if not all(isinstance(stored.get(t), dict) and "threshold" in stored[t] for t in th.TARGETS):
        return None
    return {
        t: th.OperatingPoint(
            float(stored[t]["threshold"]),
            float(stored[t].get("target_sensitivity", math.nan)),
            float(stored[t].get("val_sensitivity", math.nan)),
            float(stored[t].get("val_specificity", math.nan)),
        )
        for t in th.TARGETS
    }


class _Predictor:
    """Predicts validation and evaluated cases for one model, with a fitted temperature."""

    def __init__(self, frames: list[pd.DataFrame], calibrate: bool, batch_size: int) -> None:
        self.frames, self.calibrate, self.batch_size = frames, calibrate, batch_size
        self.y_val = label_indices(frames[0]["label"])

    def logits(self, source: ModelSource, model: Any = None) -> list[np.ndarray]:
        model = source.logits if model is None else model
        return [predict(model, f, source.input_size, self.batch_size) for f in self.frames]

    def calibrated(self, source: ModelSource) -> tuple[float, list[np.ndarray], list[np.ndarray]]:
        """``(T, [val, test] at T=1, [val, test] at T)``."""
        logits = self.logits(source)
        t = fit_temperature(logits[0], self.y_val) if self.calibrate else 1.0
        return (
            t,
            [apply_temperature(x, 1.0) for x in logits],
            [apply_temperature(x, t) for x in logits],
        )


def _notes(source: ModelSource, recorded: Any, data: Any, split: str, limit: int | None):
    notes = []
    if recorded.synthetic:
        notes.append("SYNTHETIC data: these figures say nothing about real lesions.")
    trained_on = source.info.get("dataset_version")
    if trained_on and trained_on != recorded.dataset_version:
        notes.append(
            f"The data (version {recorded.dataset_version[:16]}) are not those the model was "
            f"trained on ({str(trained_on)[:16]}): the evaluated split may hold training images."
        )
    if limit:
        notes.append(f"At most {limit} images per class: rough figures, for a quick look only.")
    if not data and split == "val":
        notes.append(
            "Thresholds and temperature were fitted on the split they are scored on: the "
            "operating point's sensitivity and the calibration are optimistic."
        )
    if not data and split == "train":
        notes.append("The training split: the model has seen these images.")
    return notes


def _rows(
    source: ModelSource,
    predictor: _Predictor,
    train: pd.DataFrame,
    val: pd.DataFrame,
    cases: pd.DataFrame,
    temperature: float,
    raw: list[np.ndarray],
    cal: list[np.ndarray],
    rules_path: str | Path,
    tta: bool,
    ensemble: Sequence[str | Path],
    compare: str | Path | None,
) -> tuple[list[Variant], list[tuple[ModelSource, float]], ModelSource | None]:
    """The comparison's rows: baselines, the model, its variants, and the compared model."""
    majority, demographic = MajorityBaseline().fit(train["label"]), DemographicBaseline().fit(train)
    rows = [
        Variant("majority class", "majority", *(majority.predict_proba(f) for f in (val, cases))),
        Variant(
            "body site + age band + sex, no image",
            "demographic",
            *(demographic.predict_proba(f) for f in (val, cases)),
        ),
    ]
    stored = _stored_points(source)
    if source.kind == "version":
        rows.append(Variant("version as exported", "cnn_raw", *raw, stored))
    else:
        rows.append(Variant("CNN, uncalibrated", "cnn_raw", *raw))
    rows.append(Variant(f"CNN, temperature {temperature:.2f}", "cnn", *cal))
    rules = load_rules(rules_path)
    sites = [val["site"].tolist(), cases["site"].tolist()]
    rows.append(
        Variant(
            "CNN + body-location rules",
            "rules",
            *(scoring.with_rules(p, s, rules) for p, s in zip(cal, sites, strict=True)),
        )
    )
    if tta:
        from training.export import ProbabilityModel
        from training.tta import TTA

        model_tta = TTA(ProbabilityModel(source.logits, temperature), input_size=source.input_size)
        rows.append(Variant("CNN + TTA (flips, 180°)", "tta", *predictor.logits(source, model_tta)))
    members: list[tuple[ModelSource, float]] = []
    if ensemble:
        members.append((source, temperature))
        member_probs = [cal]
        for path in ensemble:
            other = load_source(path)
            if other.input_size != source.input_size:
                raise ConfigError(
                    f"ensemble member {path} takes {other.input_size} images and "
                    f"{source.path} takes {source.input_size}: members must share the input size"
                )
            t, _, probs = predictor.calibrated(other)
            members.append((other, t))
            member_probs.append(probs)
            rows.append(Variant(f"member {other.name}", f"member:{len(members) - 1}", *probs))
        rows.append(
            Variant(
                f"ensemble of {len(members)}",
                "ensemble",
                *(np.mean([p[i] for p in member_probs], axis=0) for i in (0, 1)),
            )
        )
    compared = None
    if compare:
        compared = load_source(compare)
        probs = [apply_temperature(x, 1.0) for x in predictor.logits(compared)]
        rows.append(
            Variant(f"compared: {compared.name}", "compare", *probs, _stored_points(compared))
        )

    return rows, members, compared


def _gate(
    candidate: Variant,
    served: Variant,
    scores: dict[str, scoring.Score],
    cases: scoring.Cases,
    n_resamples: int,
    seed: int,
    tolerances: dict[str, float],
    force: bool,
) -> GateDecision:
    """The promotion gate on both models' own outputs and thresholds, paired by lesion."""
    diffs = {}
    if n_resamples:
        diffs = scoring.paired_differences(
            served.test, candidate.test, cases, served.points, candidate.points, n_resamples, seed
        )
    return check_promotion(
        scores[candidate.key].metrics(),
        scores[served.key].metrics(),
        {k: (d.low, d.high) for k, d in diffs.items()},
        tolerances,
        force,
    )


def evaluate(
    model: str | Path,
    split: str = "test",
    data: str | Path | None = None,
    data_dir: str | None = None,
    split_overrides: dict[str, Any] | None = None,
    name: str | None = None,
    target_sensitivity: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    calibrate: bool = True,
    tta: bool = False,
    ensemble: Sequence[str | Path] = (),
    compare: str | Path | None = None,
    rules_path: str | Path = RULES_PATH,
    limit_per_class: int | None = None,
    batch_size: int = 64,
    tolerances: dict[str, float] | None = None,
    force: bool = False,
) -> Evaluation:
    """Evaluate ``model`` (a ``.ckpt`` or an exported version folder); writes nothing.

    Args:
        model: checkpoint file or ``model_repository/<name>/<version>``.
        split: ``train``, ``val`` or ``test`` of the recorded lesion-grouped split.
        data: a CSV or HAM10000-layout folder to evaluate instead of ``split`` (validation,
            for thresholds and temperature, still comes from the recorded split).
        data_dir: the recorded split's data (default: the recorded folder, else HAM10000_DIR).
        split_overrides: data-module settings instead of the recorded ones (``seed``, ...).
        name: report name (default: the run's or version's name).
        target_sensitivity: the sensitivity the referral thresholds reach on validation.
        n_resamples: bootstrap resamples of lesions; 0 for no intervals.
        seed: bootstrap seed.
        calibrate: fit a temperature on validation (for a version: on top of its own).
        tta: also score test-time augmentation (flips and 180°).
        ensemble: more models; the ensemble is ``model`` plus these, probabilities averaged.
        compare: a model to compare with on the same cases, e.g. the served version; the
            promotion gate then judges ``model`` as the candidate.
        rules_path: body-location rules for the "CNN + rules" row.
        limit_per_class: at most this many images per class in validation and the evaluated
            cases (quick looks; rough figures).
        batch_size: images per forward pass.
        tolerances: the promotion gate's tolerances (default ``DEFAULT_TOLERANCES``).
        force: passed to the promotion gate.
    """
    from training import data as data_mod

    if split not in ("train", "val", "test"):
        raise ConfigError(f"split {split!r} is unknown: use train, val or test")
    source = load_source(model)
    recorded = rebuild_split(source, data_dir, split_overrides)
    val = recorded.splits["val"]
    cases = load_cases(data) if data else recorded.splits[split]
    if limit_per_class:
        val = data_mod.limit_per_class(val, limit_per_class, seed)
        cases = data_mod.limit_per_class(cases, limit_per_class, seed)
    predictor = _Predictor([val, cases], calibrate, batch_size)
    y_val = predictor.y_val
    log.info("predicting %d validation and %d evaluated images", len(val), len(cases))
    temperature, raw, cal = predictor.calibrated(source)

    rows, members, compared = _rows(
        source,
        predictor,
        recorded.splits["train"],
        val,
        cases,
        temperature,
        raw,
        cal,
        rules_path,
        tta,
        ensemble,
        compare,
    )
    variants = {v.key: v for v in rows}
    case_set = scoring.Cases(cases)
    scores = {}
    for v in rows:
        if v.points is None:
            v.points = th.operating_points(v.val, y_val, target_sensitivity)
        scores[v.key] = scoring.score(v.name, v.test, case_set, v.points, n_resamples, seed)
    main = variants["cnn"]
    differences = {
        v.key: scoring.paired_differences(
            main.test, v.test, case_set, main.points, v.points, n_resamples, seed
        )
        for v in rows
        if n_resamples and v.key not in ("cnn", "cnn_raw", "majority")
    }
    gate = None
    if compared is not None:
        # The candidate as it would ship: a checkpoint is exported calibrated, a version as is.
        candidate = variants["cnn" if source.kind == "checkpoint" else "cnn_raw"]
        gate = _gate(
            candidate,
            variants["compare"],
            scores,
            case_set,
            n_resamples,
            seed,
            tolerances or DEFAULT_TOLERANCES,
            force,
        )
    notes = _notes(source, recorded, data, split, limit_per_class)
    if calibrate and scores["cnn"].ece > scores["cnn_raw"].ece:
        # T minimises the validation NLL, not the ECE; a shifted case mix can undo it.
        notes.append(
            f"Temperature scaling (T={temperature:.2f}, fitted on validation) RAISED the ECE on "
            f"{split if not data else 'these cases'} ({scores['cnn_raw'].ece:.3f} -> "
            f"{scores['cnn'].ece:.3f}): export with --no-calibrate unless the reliability "
            "diagram says otherwise."
        )
    settings = {
        **recorded.settings,
        "dataset_version": recorded.dataset_version,
        "target_sensitivity": target_sensitivity,
        "n_resamples": n_resamples,
        "bootstrap_seed": seed,
        "limit_per_class": limit_per_class,
        "rules": str(rules_path),
        "val_images": len(val),
        "evaluated_images": len(cases),
        "evaluated_lesions": int(cases["group"].nunique()),
    }
    return Evaluation(
        name=name or source.name,
        source=source,
        split=str(data) if data else split,
        cases=case_set,
        val_cases=scoring.Cases(val),
        settings=settings,
        temperature=temperature,
        variants=variants,
        scores=scores,
        differences=differences,
        notes=notes,
        gate=gate,
        members=members,
    )


def promotion_check(
    candidate: str | Path,
    served: str | Path,
    force: bool = False,
    tolerances: dict[str, float] | None = None,
    **kwargs: Any,
) -> GateDecision:
    """Evaluate ``candidate`` against ``served`` on the candidate's recorded test split.

    For ``python -m serving.versions promote``: both versions are scored as they would serve
    (their own temperature and thresholds), paired over the same lesions.
    ``kwargs`` go to :func:`evaluate` (e.g. ``data_dir``, ``n_resamples``).
    """
    ev = evaluate(
        candidate, compare=served, calibrate=False, force=force, tolerances=tolerances, **kwargs
    )
    assert ev.gate is not None
    return ev.gate


def write(ev: Evaluation, out_dir: str | Path = "reports", wandb: bool = True) -> Path:
    """Write ``<out_dir>/<name>/report.md``, its figures, ``metrics.json``, ``predictions.npz``;
    log them to an offline W&B run unless ``wandb`` is False. Returns the report's path."""
    from training.evaluation.report import write_report

    folder = Path(out_dir) / ev.name
    path = write_report(ev, folder)
    if wandb:
        from training.evaluation.report import log_wandb

        log_wandb(ev, folder)
    return path


def export(
    ev: Evaluation,
    which: str = "cnn",
    repository: str | Path = "model_repository",
    name: str | None = None,
    parity_images: str | Path | None = None,
    reference_images: int = 1000,
) -> Path:
    """Export the evaluated ``which`` (cnn, tta, ensemble) as a new version, with the fitted
    temperature and the thresholds chosen on validation in its ``metadata.json``."""
    from training.evaluation.exporting import export_variant

    return export_variant(ev, which, repository, name, parity_images, reference_images)


def _served(repository: Path, name: str | None) -> Path:
    from contracts.repository import served_version
    from contracts.tensors import DEFAULT_MODEL_NAME

    model_dir = repository / (name or DEFAULT_MODEL_NAME)
    version = served_version(model_dir)
    if version is None:
        raise ConfigError(
            f"{model_dir} serves no version yet (no config.pbtxt with a specific version): "
            "pass --compare model_repository/<name>/<version>"
        )
    return model_dir / str(version)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help=".ckpt file or model_repository/<name>/<v>")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--data", help="CSV or HAM10000-layout folder to evaluate instead of --split")
    p.add_argument(
        "--data-dir", help="the recorded split's data (default: recorded, else HAM10000_DIR)"
    )
    p.add_argument("--seed-split", type=int, dest="split_seed", help="override the split seed")
    p.add_argument("--val-fraction", type=float, help="override the recorded fraction")
    p.add_argument("--test-fraction", type=float, help="override the recorded fraction")
    p.add_argument("--name", help="report name (default: the run's or version's)")
    p.add_argument("--out", default="reports", help="reports folder")
    p.add_argument("--target-sensitivity", type=float, default=0.95)
    p.add_argument("--n-resamples", type=int, default=N_RESAMPLES, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false")
    p.add_argument("--tta", action="store_true", help="also score test-time augmentation")
    p.add_argument("--ensemble", nargs="+", default=(), help="more models to average with --model")
    p.add_argument(
        "--compare",
        help="a model to compare with, or 'served' (the version --repository serves); gives "
        "the promotion gate's decision for --model as the candidate",
    )
    p.add_argument("--force", action="store_true", help="gate: promote even if worse")
    p.add_argument("--rules", default=str(RULES_PATH), help="body-location rules YAML")
    p.add_argument("--limit-per-class", type=int, help="quick look: cap images per class")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-wandb", dest="wandb", action="store_false")
    p.add_argument("--export", choices=EXPORTABLE, help="export this variant as a new version")
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--export-name", help="model name in the repository (default skin_lesion)")
    p.add_argument("--parity-images", help="real images for the export's parity check")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m training evaluate``; exit status 3 when the gate refuses."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parse(argv)
    if args.export == "tta" and not args.tta or args.export == "ensemble" and not args.ensemble:
        raise ConfigError(f"--export {args.export} needs --{args.export} to evaluate it first")
    if args.compare == "served":
        args.compare = _served(Path(args.repository), args.export_name)
    ev = evaluate(
        args.model,
        split=args.split,
        data=args.data,
        data_dir=args.data_dir,
        split_overrides={
            "seed": args.split_seed,
            "val_fraction": args.val_fraction,
            "test_fraction": args.test_fraction,
        },
        name=args.name,
        target_sensitivity=args.target_sensitivity,
        n_resamples=args.n_resamples,
        seed=args.seed,
        calibrate=args.calibrate,
        tta=args.tta,
        ensemble=args.ensemble,
        compare=args.compare,
        rules_path=args.rules,
        limit_per_class=args.limit_per_class,
        batch_size=args.batch_size,
        force=args.force,
    )
    report = write(ev, args.out, wandb=args.wandb)
    main_score = ev.scores["cnn"]
    print(f"report: {report}")
    print(
        f"{main_score.name}: balanced accuracy {main_score.balanced_accuracy}, melanoma "
        f"sensitivity at the operating point {main_score.sensitivity_mel_op} (specificity "
        f"{main_score.specificity_mel_op:.3f}), ECE {main_score.ece:.3f}"
    )
    if args.export:
        version = export(ev, args.export, args.repository, args.export_name, args.parity_images)
        print(f"exported {args.export} as {version}")
    if ev.gate is not None:
        print(ev.gate.summary())
        return 0 if ev.gate.promote else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
