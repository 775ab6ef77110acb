"""The evaluation's outputs: ``report.md`` with its figures, ``metrics.json``,
``predictions.npz``, and the same logged to an offline W&B run (job_type ``evaluation``)."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contracts.decision import ARGMAX, ARGMAX_RULE
from contracts.labels import CLASSES
from contracts.metadata import jsonable
from contracts.metrics import confusion_matrix
from training.evaluation import plots, scoring
from training.evaluation import thresholds as th
from training.evaluation.bootstrap import Interval
from training.evaluation.results import Evaluation, Variant

WANDB_PROJECT = os.environ.get("WANDB_PROJECT", "skin-lesion")


def _f(value: float | None, digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return "\N{EN DASH}"  # a missing value, as the web pages show it
    return f"{value:.{digits}f}"


def _ci(iv: Interval) -> str:
    if iv.n_resamples == 0 or math.isnan(iv.low):
        return _f(iv.estimate)
    return f"{_f(iv.estimate)} [{_f(iv.low)}, {_f(iv.high)}]"


def _diff(iv: Interval) -> str:
    return f"{iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]"


def _gain(sc: scoring.Score) -> str:
    """The decision rule's balanced accuracy minus the argmax's, paired (``-`` for argmax)."""
    if sc.decision.rule == ARGMAX:
        return "\N{EN DASH}"
    iv = sc.rule_gain
    return _diff(iv) if iv.n_resamples and not math.isnan(iv.low) else f"{iv.estimate:+.3f}"


def _confidence_rule(settings: dict[str, Any]) -> str:
    confidence = settings.get("threshold_confidence")
    if not confidence:
        return " on the validation cases"
    return (
        f" with {confidence:.0%} confidence (the one-sided Clopper-Pearson lower bound of the "
        "validation sensitivity reaches it, so the target holds on new cases with that "
        "confidence)"
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _cell(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # ages, counts
    return _f(value) if isinstance(value, float) else str(value)


def _frame_table(frame: pd.DataFrame, columns: list[str]) -> str:
    rows = [[_cell(v) for v in record] for record in frame[columns].itertuples(index=False)]
    return _table(columns, rows)


def _named(v: Variant, probs: np.ndarray) -> np.ndarray:
    """The class indices ``v``'s decision rule names for ``probs``."""
    return (v.decision or ARGMAX_RULE).decide(probs)


def _decision(v: Variant) -> str:
    rule = v.decision or ARGMAX_RULE
    return "argmax" if rule.rule == ARGMAX else f"balanced, tau {rule.tau:.2f}"


def figures(ev: Evaluation, folder: Path) -> dict[str, Path]:
    """Draw the report's PNGs into ``folder``; returns name -> path."""
    main, labels = ev.variants["cnn"], ev.labels
    mistakes = scoring.worst_mistakes(
        main.test, ev.cases, main.points["mel"].threshold, decision=main.decision or ARGMAX_RULE
    )
    out = {
        "confusion": plots.confusion(
            confusion_matrix(labels, _named(main, main.test), len(CLASSES)),
            folder / "confusion.png",
        ),
        "roc": plots.roc(main.test, labels, folder / "roc.png"),
        "reliability": plots.reliability_diagram(
            {
                "before (T=1)": ev.variants["cnn_raw"].test,
                f"after (T={ev.temperature:.2f})": main.test,
            },
            labels,
            folder / "reliability.png",
        ),
        "operating_point": plots.operating_curves(
            main.test, labels, main.points, folder / "operating_point.png"
        ),
    }
    titles = {
        "confident_wrong": "Most confident mistakes",
        "missed_melanoma": "Melanomas below the referral threshold (lowest P(mel) first)",
    }
    for key, title in titles.items():
        path = plots.thumbnails(mistakes[key], folder / f"{key}.png", title)
        if path is not None:
            out[key] = path
    return out


def render(ev: Evaluation, figs: dict[str, Path]) -> str:
    """The report as Markdown (figures referenced by file name, beside it)."""
    main = ev.variants["cnn"]
    s = ev.settings
    out = [
        f"# Evaluation: {ev.name}",
        "",
        f"Model: `{ev.source.path}` ({ev.source.kind}, {ev.source.metadata.model_name}, "
        f"input {ev.source.input_size[0]}x{ev.source.input_size[1]}). Evaluated: **{ev.split}**, "
        f"{s['evaluated_images']} images of {s['evaluated_lesions']} lesions; thresholds and "
        f"temperature from the validation split ({s['val_images']} images). Data "
        f"`{s.get('data_dir')}`, version `{str(s['dataset_version'])[:16]}`, split "
        f"{s.get('split', 'grouped')} seed {s.get('seed')} (val {s.get('val_fraction')}, test "
        f"{s.get('test_fraction')}). Written {datetime.now(UTC).isoformat(timespec='seconds')}.",
        "",
    ]
    out += [f"> **Note:** {n}" for n in ev.notes] + ([""] if ev.notes else [])
    head = [
        "model",
        "balanced accuracy [95% CI]",
        "decision rule",
        "balanced accuracy, argmax",
        "rule minus argmax, paired [95% CI]",
        "mel sens., argmax",
        "mel sens. at op. point [95% CI]",
        "mel spec. at op. point",
        "malignant sens. / spec. at op. point",
        "macro AUROC",
        "ECE",
    ]
    rows = []
    for key, sc in ev.scores.items():
        rows.append(
            [
                ("**" + sc.name + "**") if key == "cnn" else sc.name,
                _ci(sc.balanced_accuracy),
                _decision(ev.variants[key]),
                _f(sc.balanced_accuracy_argmax.estimate),
                _gain(sc),
                _ci(sc.sensitivity_mel_argmax),
                _ci(sc.sensitivity_mel_op),
                _f(sc.specificity_mel_op),
                f"{_f(sc.sensitivity_malignant_op)} / {_f(sc.specificity_malignant_op)}",
                _f(sc.auroc_macro),
                _f(sc.ece),
            ]
        )
    out += [
        "## Side by side",
        "",
        f"Operating point (op.): the threshold on P(mel) chosen on validation to reach a "
        f"sensitivity of {s['target_sensitivity']:.2f}{_confidence_rule(s)}, applied here; the "
        "malignant group uses P(akiec+bcc+mel) the same way. Intervals resample lesions "
        f"({s['n_resamples']} resamples, seed {s['bootstrap_seed']}). "
        "ECE: 15 bins, top-class confidence. Balanced accuracy is of the class each row names by "
        "its decision rule (contracts.decision: the argmax of log P - tau log prior, tau chosen "
        "on validation; what an exported version names), the plain argmax's beside it.",
        "",
        _table(head, rows),
        "",
    ]
    if ev.differences:
        rows = [
            [
                ev.scores[key].name,
                _diff(d["balanced_accuracy"]),
                _diff(d["sensitivity_mel_argmax"]),
                _diff(d["sensitivity_mel_op"]),
            ]
            for key, d in ev.differences.items()
        ]
        out += [
            f"Paired differences against **{main.name}** (row minus it, same lesion resamples; "
            "an interval containing 0 means this split cannot tell them apart):",
            "",
            _table(["model", "Δ balanced accuracy", "Δ mel sens. argmax", "Δ mel sens. op."], rows),
            "",
        ]
    if "ensemble" in ev.scores:
        members = [k for k in ev.scores if k.startswith("member:")] + ["cnn"]
        best = max(members, key=lambda k: ev.scores[k].balanced_accuracy.estimate)
        gain = ev.scores["ensemble"].balanced_accuracy.estimate - (
            ev.scores[best].balanced_accuracy.estimate
        )
        auroc_gain = ev.scores["ensemble"].auroc_macro - ev.scores[best].auroc_macro
        out += [
            f"Ensemble gain over its best member ({ev.scores[best].name}): balanced accuracy "
            f"{gain:+.3f}, macro AUROC {auroc_gain:+.3f}.",
            "",
        ]
    out += _decisions(ev, figs)
    out += _errors(ev, figs)
    if ev.gate is not None:
        verdict = "PROMOTE" if ev.gate.promote else "REFUSE"
        out += [
            "## Promotion gate",
            "",
            f"**{verdict}** {ev.name} over {ev.scores['compare'].name.removeprefix('compared: ')}:",
            "",
        ]
        out += [f"- {r}" for r in ev.gate.reasons] + [""]
    return "\n".join(out)


def _decisions(ev: Evaluation, figs: dict[str, Path]) -> list[str]:
    main = ev.variants["cnn"]
    sc = ev.scores["cnn"]
    rows = []
    for target in th.TARGETS:
        p = main.points[target]
        score, pos = th.scores(main.test, target), th.positives(ev.labels, target)
        sens, spec = th.rates(score, pos, p.threshold)
        rows.append(
            [
                "P(mel)" if target == "mel" else "P(akiec+bcc+mel)",
                f"{p.threshold:.4f}",
                f"{_f(p.val_sensitivity)} / {_f(p.val_specificity)}",
                f"{_f(sens)} / {_f(spec)}",
                f"{int(pos.sum())}",
            ]
        )
    return [
        "## Operating point (what the gateway's referral uses)",
        "",
        "Refer when the score is at or above the threshold. Stored in the exported version's "
        "`metadata.json` under `thresholds` by `--export`.",
        "",
        _table(
            [
                "score",
                "threshold",
                "val sens. / spec.",
                f"{ev.split} sens. / spec.",
                "positives here",
            ],
            rows,
        ),
        "",
        f"![operating point]({figs['operating_point'].name})",
        "",
        *_confidence_cost(ev),
        "## Calibration",
        "",
        f"Temperature fitted on validation: **T = {ev.temperature:.3f}** (logits / T). ECE on "
        f"{ev.split}: {_f(ev.scores['cnn_raw'].ece)} before, {_f(sc.ece)} after. It does not "
        "change the argmax; the two ECEs and the diagram show whether it made the "
        "probabilities the gateway shows mean what they say.",
        "",
        f"![reliability]({figs['reliability'].name})",
        "",
        f"![confusion matrix]({figs['confusion'].name}) ![ROC]({figs['roc'].name})",
        "",
    ]


def _confidence_cost(ev: Evaluation) -> list[str]:
    """Per variant: specificity at the operating point against specificity where this split's
    own sensitivity first reaches the target (hindsight, Score.specificity_*_hindsight)."""
    rows = [
        [
            sc.name,
            f"{_f(sc.specificity_mel_op)} / {_f(sc.specificity_mel_hindsight)}",
            f"{_f(sc.specificity_malignant_op)} / {_f(sc.specificity_malignant_hindsight)}",
        ]
        for sc in ev.scores.values()
    ]
    target = ev.variants["cnn"].points["mel"].target_sensitivity
    return [
        f"What the threshold rule costs: specificity at the operating point (set on validation "
        f"to reach sensitivity {target:.2f}{_confidence_rule(ev.settings)}) against specificity "
        f"where {ev.split}'s own sensitivity first reaches {target:.2f} (the ROC read in "
        "hindsight: no threshold can be set there ahead of time).",
        "",
        _table(
            ["model", "mel spec.: op. point / hindsight", "malignant spec.: op. point / hindsight"],
            rows,
        ),
        "",
    ]


def _errors(ev: Evaluation, figs: dict[str, Path]) -> list[str]:
    main = ev.variants["cnn"]
    mistakes = scoring.worst_mistakes(
        main.test, ev.cases, main.points["mel"].threshold, decision=main.decision or ARGMAX_RULE
    )
    groups = scoring.subgroups(
        main.test, ev.cases, main.points, decision=main.decision or ARGMAX_RULE
    )
    cols = ["image_id", "label", "predicted", "confidence", "p_mel", "site", "age", "sex"]
    out = ["## Error analysis", ""]
    for key, title in (
        ("confident_wrong", "Most confident mistakes"),
        ("missed_melanoma", "Missed melanomas (below the threshold), lowest P(mel) first"),
    ):
        out += [f"### {title}", ""]
        if mistakes[key].empty:
            out += ["None.", ""]
            continue
        out += [_frame_table(mistakes[key], cols), "", f"![{key}]({figs[key].name})", ""]
    cols = [
        "by",
        "value",
        "n",
        "n_mel",
        "balanced_accuracy",
        "sensitivity_mel_op",
        "specificity_mel_op",
        "accuracy",
    ]
    out += [
        "### By body site, age band and sex",
        "",
        "Small groups give unstable figures: read them with `n` beside.",
        "",
        _frame_table(groups, cols),
        "",
    ]
    return out


def summary(ev: Evaluation) -> dict[str, Any]:
    """What ``metrics.json`` holds: settings, per-variant metrics with intervals, thresholds."""

    def interval(iv: Interval) -> dict[str, float]:
        return {"estimate": iv.estimate, "low": iv.low, "high": iv.high}

    variants = {}
    for key, sc in ev.scores.items():
        variants[key] = {
            "name": sc.name,
            "metrics": sc.metrics(),
            "intervals": {
                k: interval(getattr(sc, k))
                for k in (
                    "balanced_accuracy",
                    "balanced_accuracy_argmax",
                    "rule_gain",
                    "sensitivity_mel_argmax",
                    "sensitivity_mel_op",
                )
            },
            "thresholds": th.thresholds_metadata(ev.variants[key].points),
            "decision": (ev.variants[key].decision or ARGMAX_RULE).to_metadata(),
        }
    return jsonable(
        {
            "name": ev.name,
            "model": str(ev.source.path),
            "kind": ev.source.kind,
            "split": ev.split,
            "settings": ev.settings,
            "notes": ev.notes,
            "temperature": ev.temperature,
            "variants": variants,
            "differences_vs_cnn": {
                k: {m: interval(iv) for m, iv in d.items()} for k, d in ev.differences.items()
            },
            "gate": None
            if ev.gate is None
            else {
                "promote": ev.gate.promote,
                "passed": ev.gate.passed,
                "reasons": list(ev.gate.reasons),
            },
        }
    )


def write_report(ev: Evaluation, folder: Path) -> Path:
    """Write the report, figures, ``metrics.json`` and ``predictions.npz`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    figs = figures(ev, folder)
    (folder / "report.md").write_text(render(ev, figs))
    (folder / "metrics.json").write_text(json.dumps(summary(ev), indent=2) + "\n")
    frame = ev.cases.frame
    np.savez_compressed(
        folder / "predictions.npz",
        image_id=frame["image_id"].astype(str).to_numpy(),
        group=frame["group"].astype(str).to_numpy(),
        label=ev.labels,
        **{f"probs_{k.replace(':', '_')}": v.test for k, v in ev.variants.items()},
    )
    return folder / "report.md"


def log_wandb(ev: Evaluation, folder: Path) -> str | None:
    """Log the report to an offline W&B run (job_type ``evaluation``); returns its folder."""
    import wandb  # optional and slow to import: only when a run is logged

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    data = summary(ev)
    run = wandb.init(
        project=WANDB_PROJECT,
        job_type="evaluation",
        name=f"eval-{ev.name}",
        config={
            "model": str(ev.source.path),
            "split": ev.split,
            **ev.settings,
            "temperature": ev.temperature,
        },
        tags=["synthetic" if "SYNTHETIC" in " ".join(ev.notes) else "real-data"],
        reinit="finish_previous",
    )
    try:
        columns = ["key", "model", *next(iter(data["variants"].values()))["metrics"].keys()]
        table = wandb.Table(columns=columns)
        for key, v in data["variants"].items():
            table.add_data(key, v["name"], *v["metrics"].values())
        run.log({"evaluation/comparison": table})
        run.summary.update(
            {
                f"{ev.split}/{k}": v
                for k, v in data["variants"]["cnn"]["metrics"].items()
                if v is not None
            }
        )
        run.log({f"evaluation/{p.stem}": wandb.Image(str(p)) for p in sorted(folder.glob("*.png"))})
        artifact = wandb.Artifact(f"evaluation-{ev.name}", type="evaluation")
        for name in ("report.md", "metrics.json"):
            artifact.add_file(str(folder / name))
        run.log_artifact(artifact)
        return str(Path(run.dir).parent)
    finally:
        run.finish()


def write(ev: Evaluation, out_dir: str | Path = "reports", wandb: bool = True) -> Path:
    """Write ``<out_dir>/<name>/report.md``, its figures, ``metrics.json``, ``predictions.npz``;
    log them to an offline W&B run unless ``wandb`` is False. Returns the report's path."""
    folder = Path(out_dir) / ev.name
    path = write_report(ev, folder)
    if wandb:
        log_wandb(ev, folder)
    return path
