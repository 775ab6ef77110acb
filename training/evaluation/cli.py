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
import sys
from collections.abc import Sequence
from pathlib import Path

from contracts.decision import ARGMAX_RULE
from contracts.errors import ConfigError
from contracts.labels import NUM_CLASSES
from contracts.metadata import METADATA_FILE, read_metadata
from contracts.metrics import confusion_matrix, metrics_from_confusion
from contracts.repository import served_version
from contracts.tensors import DEFAULT_MODEL_NAME
from training.evaluation import model_card
from training.evaluation.bootstrap import N_RESAMPLES
from training.evaluation.config import RULES_PATH, SPLITS, EvaluationConfig
from training.evaluation.report import write
from training.evaluation.results import Evaluation
from training.evaluation.run import evaluate
from training.evaluation.thresholds import DEFAULT_CONFIDENCE
from training.export.cli import add_cam_argument, add_gate_arguments
from training.export.variants import EXPORTABLE, export_variant


def _served(repository: Path, name: str | None) -> Path:
    """The version folder ``repository`` serves for ``name``."""
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
    p.add_argument("--split", default="test", choices=SPLITS)
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
    p.add_argument(
        "--threshold-confidence",
        type=float,
        default=DEFAULT_CONFIDENCE,
        help="one-sided confidence that the referral thresholds reach --target-sensitivity "
        "(lower Clopper-Pearson bound of the validation sensitivity); 0: reach it on the "
        "validation cases only",
    )
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
    p.add_argument(
        "--decision",
        choices=("balanced", "argmax"),
        default="balanced",
        help="which class each row names: the prior-corrected argmax chosen on validation "
        "(contracts.decision; exported under metadata.json's decision) or the plain argmax",
    )
    p.add_argument("--no-wandb", dest="wandb", action="store_false")
    p.add_argument(
        "--export",
        choices=(*EXPORTABLE, "best"),
        help="export this variant as a new version; best: of those evaluated (cnn, with --tta "
        "tta, with --ensemble ensemble), the one with the highest VALIDATION balanced accuracy",
    )
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--export-name", help="model name in the repository (default skin_lesion)")
    p.add_argument("--parity-images", help="real images for the export's parity check")
    add_gate_arguments(p)
    add_cam_argument(p)
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> EvaluationConfig:
    """The evaluation the command line asks for."""
    if args.export == "best" and not (args.tta or args.ensemble):
        raise ConfigError("--export best chooses among variants: add --tta or --ensemble")
    if (args.export == "tta" and not args.tta) or (args.export == "ensemble" and not args.ensemble):
        raise ConfigError(f"--export {args.export} needs --{args.export} to evaluate it first")
    compare = args.compare
    if compare == "served":
        compare = _served(Path(args.repository), args.export_name)
    return EvaluationConfig(
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
        threshold_confidence=args.threshold_confidence or None,
        n_resamples=args.n_resamples,
        seed=args.seed,
        calibrate=args.calibrate,
        tta=args.tta,
        ensemble=args.ensemble,
        compare=compare,
        rules_path=args.rules,
        limit_per_class=args.limit_per_class,
        batch_size=args.batch_size,
        balanced_decision=args.decision == "balanced",
        force=args.force,
    )


def best_on_validation(ev: Evaluation) -> tuple[str, dict[str, float]]:
    """The exportable variant of ``ev`` with the highest balanced accuracy on the VALIDATION
    cases (the test split is for reporting the choice, not making it), and each one's figure,
    each naming its classes by its own decision rule (chosen on those cases too). A tie keeps
    the simpler: cnn before tta before ensemble."""
    labels = ev.val_cases.labels
    figures = {}
    for key in EXPORTABLE:
        if key in ev.variants:
            v = ev.variants[key]
            named = (v.decision or ARGMAX_RULE).decide(v.val)
            cm = confusion_matrix(labels, named, NUM_CLASSES)
            figures[key] = metrics_from_confusion(cm)["balanced_accuracy"]
    best = max(figures, key=lambda k: (figures[k], -EXPORTABLE.index(k)))
    return best, figures


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m training evaluate``; exit status 3 when the gate refuses."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parse(argv)
    ev = evaluate(args.model, config_from_args(args))
    report = write(ev, args.out, wandb=args.wandb)
    main_score = ev.scores["cnn"]
    print(f"report: {report}")
    print(
        f"{main_score.name}: balanced accuracy {main_score.balanced_accuracy}, melanoma "
        f"sensitivity at the operating point {main_score.sensitivity_mel_op} (specificity "
        f"{main_score.specificity_mel_op:.3f}), ECE {main_score.ece:.3f}"
    )
    if args.export:
        which = args.export
        if which == "best":
            which, figures = best_on_validation(ev)
            print(
                "validation balanced accuracy: "
                + ", ".join(f"{k} {v:.3f}" for k, v in figures.items())
                + f"; exporting {which}"
            )
        version = export_variant(
            ev,
            which,
            args.repository,
            args.export_name,
            args.parity_images,
            gate=args.gate,
            ood_score=args.ood_score,
            gate_images=args.gate_images,
            explain=args.explain,
        )
        print(f"exported {which} as {version}")
        meta = read_metadata(version / METADATA_FILE)
        print(f"model card: {model_card.write(ev, which, version, meta)}")
        if args.wandb:
            print(f"version logged to W&B: {model_card.log_wandb(version, meta)}")
    if ev.gate is not None:
        print(ev.gate.summary())
        return 0 if ev.gate.promote else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
