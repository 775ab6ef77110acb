"""A model card (Mitchell et al. 2019) for an exported version, from what the evaluation knows.

``python -m training evaluate --export`` writes it as ``MODEL_CARD.md`` in the version's
folder, beside ``metadata.json``; the gateway serves it (``/model-cards/<version>``) and the
clinician page links each result to the card of the version that produced it. Every figure
comes from the evaluation that exported the version (held-out split, lesion bootstrap
intervals) or from the version's ``metadata.json``; nothing is typed by hand except the
intended use and the known limits of HAM10000, which hold for every version.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contracts.decision import ARGMAX, ARGMAX_RULE, DecisionRule
from contracts.labels import CLASS_NAMES, CLASSES, MALIGNANT
from contracts.metadata import VersionMetadata
from contracts.repository import MODEL_CARD_FILE
from training.evaluation import scoring

if TYPE_CHECKING:  # annotations only: results imports sources, which imports the export (cycle)
    from training.evaluation.results import Evaluation

LIMITS = (
    "Dermoscopic photos only: clinical (non-dermoscopic) photos, histology slides and photos "
    "of anything but a skin lesion are outside its use (the gateway refuses what it can tell "
    "is not a dermoscopic lesion photo).",
    "Seven classes only (HAM10000's): a lesion of any other kind (e.g. squamous cell "
    "carcinoma beyond Bowen's disease, Merkel cell carcinoma, a scar) still gets one of the "
    "seven.",
    "One dataset from two sites (Vienna, Austria and Queensland, Australia), mostly light "
    "skin (Fitzpatrick I-III): performance on darker skin is unknown.",
    "Trained and evaluated on photos downscaled to 200x150 pixels.",
    "Evaluated retrospectively on a held-out split of the same dataset, never prospectively "
    "in a clinic: the live figures on the monitoring page are the first evidence there.",
    "Small subgroups (rare sites, the youngest and oldest patients) give unstable figures: "
    "read them with their counts.",
)


def _f(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "\N{EN DASH}"
    return f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
    ]


def _counts(frame: pd.DataFrame, column: str, order: list[str] | None = None) -> str:
    counts = frame[column].fillna("unknown").astype(str).value_counts()
    keys = [k for k in (order or []) if k in counts.index] or list(counts.index)
    return ", ".join(f"{k} {int(counts[k])}" for k in keys)


def _rule_words(rule: DecisionRule) -> str:
    """How the version names its class, in words."""
    if rule.rule == ARGMAX:
        return "the class named is the most probable one"
    return (
        f"the class named is the most probable after dividing each probability by its "
        f"training prior to the power {rule.tau:.2f}, chosen on validation"
    )


def per_class(
    probs: np.ndarray, labels: np.ndarray, decision: DecisionRule = ARGMAX_RULE
) -> list[list[str]]:
    """Rows of class, name, cases, sensitivity (recall), precision of the class ``decision``
    names (the plain argmax by default)."""
    pred = decision.decide(np.asarray(probs))
    rows = []
    for i, code in enumerate(CLASSES):
        cases = int((labels == i).sum())
        called = int((pred == i).sum())
        hit = int(((labels == i) & (pred == i)).sum())
        rows.append(
            [
                f"{code}{' (malignant)' if code in MALIGNANT else ''}",
                CLASS_NAMES[code],
                str(cases),
                _f(hit / cases if cases else None),
                _f(hit / called if called else None),
            ]
        )
    return rows


def render(ev: Evaluation, variant: str, meta: VersionMetadata) -> str:
    """The card of version ``meta`` exported from ``ev``'s ``variant`` (cnn, tta, ensemble)."""
    sc, v, s = ev.scores[variant], ev.variants[variant], ev.settings
    test = ev.cases.frame
    out = [
        f"# Model card: {meta.name} version {meta.version}",
        "",
        f"Written {datetime.now(UTC).isoformat(timespec='seconds')} by `python -m training "
        f"evaluate --export`, from the evaluation that exported this version ({sc.name}). "
        "Decision support, **not a medical device** and not a diagnosis: a clinician decides.",
        "",
        "## Model",
        "",
        f"- Network: {meta.model_name or 'unknown'}, input {_inputs(meta)}, seven "
        f"probabilities; exported variant: **{variant}** "
        f"({'the network alone' if variant == 'cnn' else sc.name}), calibrated by temperature "
        f"scaling on the validation split (T = {_f(meta.temperature, 3)}).",
        f"- Trained from `{ev.source.path}`; created {meta.created_at or 'unknown'}; torch "
        f"{meta.torch_version or 'unknown'}; W&B run {meta.wandb_run_id or 'none'}.",
        "",
        "## Intended use",
        "",
        "- **Users:** clinicians (dermatologists, general practitioners) who look at a "
        "dermoscopic photo of a pigmented skin lesion and decide whether to refer or excise.",
        "- **Use:** a second opinion: a ranking over seven classes, the classes the body-site "
        "rules exclude, and a referral recommendation at an operating point chosen for high "
        "sensitivity to melanoma and to malignancy.",
        "- **Not for:** self-diagnosis by patients, screening without a clinician, any photo "
        "that is not dermoscopic, children (few in the data), or deciding not to biopsy a "
        "lesion a clinician suspects.",
        "",
        "## Data",
        "",
        f"- HAM10000 (CC BY-NC 4.0), dataset version `{str(meta.dataset_version)[:16]}`"
        f"{' (**synthetic** stand-in data: these figures say nothing about real lesions)' if meta.synthetic else ''}; "  # noqa: E501
        f"split by lesion (seed {s.get('seed')}): validation {s['val_images']} images, "
        f"evaluated ({ev.split}) {s['evaluated_images']} images of "
        f"{s['evaluated_lesions']} lesions.",
        *_training_data(s.get("train_distribution")),
        f"- Classes in the evaluated split: {_counts(test, 'label', list(CLASSES))}.",
        f"- Sex: {_counts(test, 'sex')}. Age bands: "
        + ", ".join(
            f"{band} {n}"
            for band, n in pd.Series([scoring.age_band(a) for a in test["age"]])
            .value_counts()
            .reindex(scoring.AGE_BANDS)
            .dropna()
            .astype(int)
            .items()
        )
        + ".",
        f"- Body sites: {_counts(test, 'site')}.",
        "",
        f"## Evaluation ({ev.split} split, 95% intervals from {s['n_resamples']} lesion resamples)",
        "",
    ]
    out += _table(
        ["figure", "value"],
        [
            [
                f"balanced accuracy ({_rule_words(sc.decision)})",
                f"{_f(sc.balanced_accuracy.estimate)} [{_f(sc.balanced_accuracy.low)}, "
                f"{_f(sc.balanced_accuracy.high)}]",
            ],
            ["balanced accuracy of the plain argmax", _f(sc.balanced_accuracy_argmax.estimate)],
            ["macro AUROC (one class vs the rest)", _f(sc.auroc_macro)],
            [
                "melanoma sensitivity at the operating point",
                f"{_f(sc.sensitivity_mel_op.estimate)} [{_f(sc.sensitivity_mel_op.low)}, "
                f"{_f(sc.sensitivity_mel_op.high)}]",
            ],
            ["melanoma specificity at the operating point", _f(sc.specificity_mel_op)],
            [
                "malignant (akiec+bcc+mel) sensitivity / specificity at its operating point",
                f"{_f(sc.sensitivity_malignant_op)} / {_f(sc.specificity_malignant_op)}",
            ],
            ["expected calibration error (15 bins, top class)", _f(sc.ece)],
        ],
    )
    out += [f"### Per class ({_rule_words(sc.decision)})", ""]
    out += _table(
        ["class", "name", "cases", "sensitivity", "precision"],
        per_class(v.test, ev.labels, sc.decision),
    )
    out += ["## Operating points", ""]
    rows = [
        [key, _f(p.get("threshold"), 4), _f(p.get("val_sensitivity")), _f(p.get("val_specificity"))]
        for key, p in meta.thresholds.items()
    ]
    if rows:
        out += [
            "Refer when P(mel) or P(akiec+bcc+mel) reaches its threshold, each chosen on "
            f"validation so that sensitivity reaches {s['target_sensitivity']:.2f}"
            + (
                f" with {s['threshold_confidence']:.0%} confidence (lower Clopper-Pearson bound)"
                if s.get("threshold_confidence")
                else ""
            )
            + ".",
            "",
            *_table(
                ["score", "threshold", "validation sensitivity", "validation specificity"],
                rows,
            ),
        ]
    else:
        out += ["None: this version gives rankings without referral advice.", ""]
    groups = scoring.subgroups(v.test, ev.cases, v.points or sc.points, decision=sc.decision)
    out += [
        "## Subgroups",
        "",
        "Melanoma sensitivity and specificity at the operating point, balanced accuracy, by "
        "sex, age band and body site (small groups are unstable: read `n` beside).",
        "",
    ]
    out += _table(
        ["by", "group", "n", "melanomas", "balanced accuracy", "mel sens.", "mel spec."],
        [
            [
                str(r["by"]),
                str(r["value"]),
                str(int(r["n"])),
                str(int(r["n_mel"])),
                _f(r["balanced_accuracy"]),
                _f(r["sensitivity_mel_op"]),
                _f(r["specificity_mel_op"]),
            ]
            for _, r in groups.iterrows()
        ],
    )
    out += ["## What it refuses", ""]
    out += _gate(meta.gate)
    out += ["## Known limits", "", *[f"- {limit}" for limit in LIMITS], ""]
    out += [
        "## Reporting a problem",
        "",
        "- A wrong answer: record the confirmed diagnosis on the result page (or "
        "`POST /v1/predictions/{id}/feedback`); the monitoring page shows live performance "
        "per version.",
        "- An error: quote the answer's `X-Request-ID` (and an internal error's `error_id`) "
        "to the operator, who finds the request in the gateway's logs.",
        f"- A version that should not serve: `python -m serving.versions rollback` serves the "
        f"one before {meta.version}.",
        "",
    ]
    return "\n".join(out)


def render_unevaluated(meta: VersionMetadata) -> str:
    """The card of a version ``python -m training export`` wrote: what its metadata.json knows
    (no held-out evaluation: the card says so, and how to get one)."""
    validation = {k: v for k, v in meta.metrics.items() if isinstance(v, int | float)}
    rows = [[k, _f(float(v))] for k, v in sorted(validation.items())]
    out = [
        f"# Model card: {meta.name} version {meta.version}",
        "",
        f"Written {datetime.now(UTC).isoformat(timespec='seconds')} by `python -m training "
        "export`, from the version's metadata.json. Decision support, **not a medical device** "
        "and not a diagnosis: a clinician decides.",
        "",
        "> **Not evaluated on the held-out split.** This version was exported without an "
        "evaluation: there are no test figures, intervals, per-class or subgroup results here. "
        "`python -m training evaluate --model <its folder> --tta --export best` evaluates it "
        "and writes a full card with the version it exports.",
        "",
        "## Model",
        "",
        f"- Network: {meta.model_name or 'unknown'}, input {_inputs(meta)}, seven "
        f"probabilities; temperature {_f(meta.temperature, 3)}; created "
        f"{meta.created_at or 'unknown'}; torch {meta.torch_version or 'unknown'}; W&B run "
        f"{meta.wandb_run_id or 'none'}.",
        "",
        "## Data",
        "",
        f"- HAM10000 (CC BY-NC 4.0), dataset version `{str(meta.dataset_version)[:16]}`"
        + (" (**synthetic** stand-in data)" if meta.synthetic else "")
        + ".",
        "",
        "## Validation figures recorded by training",
        "",
        *(_table(["figure", "value"], rows) if rows else ["None recorded.", ""]),
        "## Operating points",
        "",
    ]
    points = [
        [key, _f(p.get("threshold"), 4), _f(p.get("val_sensitivity")), _f(p.get("val_specificity"))]
        for key, p in meta.thresholds.items()
    ]
    out += (
        _table(["score", "threshold", "validation sensitivity", "validation specificity"], points)
        if points
        else ["None: this version gives rankings without referral advice.", ""]
    )
    out += ["## What it refuses", "", *_gate(meta.gate)]
    out += ["## Known limits", "", *[f"- {limit}" for limit in LIMITS], ""]
    return "\n".join(out)


def _inputs(meta: VersionMetadata) -> str:
    """What the version reads: the photo, and for a fusion version the patient's fields."""
    height, width = meta.input_size
    photo = f"{height}x{width} RGB"
    if meta.clinical is None:
        return photo
    return (
        f"{photo} and the patient's age, sex and body site (encoding "
        f"`{meta.clinical.get('version')}`; a field the form leaves out is read as unknown, "
        "which training showed the network on purpose)"
    )


def _training_data(dist: dict[str, Any] | None) -> list[str]:
    """The training split's make-up, as the evaluation rebuilt it (none for a CSV source)."""
    if not dist:
        return []

    def line(key: str, order: list[str] | None = None) -> str:
        counts = dist.get(key) or {}
        keys = [k for k in (order or []) if k in counts] or sorted(counts, key=lambda k: -counts[k])
        return ", ".join(f"{k} {counts[k]}" for k in keys)

    return [
        f"- Trained on {dist['images']} images: {line('label', list(CLASSES))}; sex "
        f"{line('sex')}; age bands {line('age band', [*scoring.AGE_BANDS, 'unknown'])}; "
        f"body sites {line('site')}.",
    ]


def _gate(gate: dict[str, Any] | None) -> list[str]:
    if not gate:
        return ["No gate in this version: only the gateway's own quality settings apply.", ""]
    ood = gate.get("ood") or {}
    lines = [
        "Photos that are not usable dermoscopic lesion photos get no diagnosis: quality checks "
        "(size, aspect, exposure, contrast, sharpness, colour) at the training data's range, "
        "then the network's own out-of-distribution score."
    ]
    if ood:
        bound, confidence = (
            ood.get("validation_false_refusal_upper_bound"),
            ood.get("confidence"),
        )
        lines.append(
            f"The score's threshold ({_f(ood.get('threshold'), 1)}) was chosen on validation "
            f"({ood.get('rule', 'unknown rule')}); "
            + (
                f"the upper {confidence:.0%} bound of the whole gate's false-refusal rate is "
                f"{_f(bound)}."
                if bound is not None and confidence is not None
                else "no confidence bound recorded (too few validation images for one)."
            )
        )
    return [" ".join(lines), ""]


def write(ev: Evaluation | None, variant: str, version_dir: Path, meta: VersionMetadata) -> Path:
    """Write ``MODEL_CARD.md`` into ``version_dir`` (``ev`` None: a version exported without
    an evaluation, :func:`render_unevaluated`); its path."""
    path = version_dir / MODEL_CARD_FILE
    path.write_text(render(ev, variant, meta) if ev is not None else render_unevaluated(meta))
    return path


def log_wandb(version_dir: Path, meta: VersionMetadata) -> str:
    """Log the exported version (model, metadata, card) as one W&B model artifact, in an
    offline run unless WANDB_MODE says otherwise; returns the run's folder."""
    import os

    import wandb  # optional and slow to import: only when a run is logged

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(
        project="skin-lesion",
        job_type="export",
        name=f"export-{meta.name}-v{meta.version}",
        config={"model_name": meta.model_name, "input_size": list(meta.input_size)},
        reinit="finish_previous",
    )
    try:
        artifact = wandb.Artifact(
            f"{meta.name}-v{meta.version}",
            type="model",
            metadata={"version": meta.version, "dataset_version": meta.dataset_version},
        )
        for path in sorted(version_dir.iterdir()):
            if path.is_file():
                artifact.add_file(str(path))
        run.log_artifact(artifact)
        return str(Path(run.dir).parent)
    finally:
        run.finish()
