"""The image gate of an exported version, measured: what it refuses that it should not, and
what it lets through that it should refuse.

    python -m training.evaluation.ood_gate --repository model_repository --name skin_lesion \\
        --version 3 [4 5 ...] --out reports/gate [--real-lesions DIR] [--max-test N]
    python -m training.evaluation.ood_gate model_repository/skin_lesion/3 --out reports/gate

For each version it applies the whole gate exactly as the gateway does
(:mod:`contracts.quality`): ``check_geometry`` on the decoded size, then ``check_content`` on
``measure(eval_resize(rgb, size), width, height)``, then the model's out-of-distribution score
against ``ood_threshold()``; the first failed check is the reason. It runs on

- the lesion-grouped TEST split of the version's recorded split (false refusals),
- the full-size real lesion photos (``--real-lesions``, default ``REAL_LESIONS_DIR``),
- the ``far`` corpus of :mod:`training.ood_corpus` (catch rate per kind),
- the ``degraded`` corpus built from a seeded sample of test-split photos (catch per kind),

and writes ``<out>/<model>_v<version>/`` with ``gate.json`` (every figure), ``gate.md``
(tables), ``images.csv`` (each image's features, score and verdict), ``scores.png`` (score
distributions with the threshold) and ``roc.png``; with several versions also
``<out>/comparison.md`` and ``comparison.json``. The corpora are built once for all versions.

The score is computed on every image, whatever the quality checks say, so "score alone"
columns show what the score would catch by itself (what to compare when choosing a score).

A version without the out-of-distribution output is measured on the quality checks only (the
report says so). A version without ``gate.quality`` (exported before the gate) gets no quality
check, as in the gateway, unless ``--fit-quality`` fits the thresholds here as export would
(:func:`contracts.quality.fit_quality_thresholds` on a seeded sample of its training split);
the report says which. The split comes from the checkpoint's recorded data-module settings,
else those stored with the version's drift reference, else the defaults (with a warning in
the report: the test split may then hold training images).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import beta
from sklearn.metrics import roc_auc_score

from contracts.errors import ConfigError, DataError
from contracts.images import eval_resize, index_images, read_image
from contracts.metadata import METADATA_FILE, MetadataError, VersionMetadata, read_metadata
from contracts.quality import (
    OUT_OF_DISTRIBUTION,
    REASON_CODES,
    ImageFeatures,
    QualityThresholds,
    check_content,
    check_geometry,
    fit_quality_thresholds,
    measure,
    out_of_distribution,
)
from contracts.repository import served_version
from contracts.tensors import DEFAULT_MODEL_NAME
from training.evaluation import ood_gate_report
from training.export.torchscript import quiet_torchscript, served_outputs
from training.export.wrapper import ExportedVersion
from training.export.writer import MODEL_FILE
from training.ood_corpus import DEGRADED, FAR, CorpusImage, degraded, far_from_lesion
from training.recorded_split import SplitData, datamodule_hparams, rebuild_split

log = logging.getLogger(__name__)

TEST, REAL = "test", "real"
CORPORA = (TEST, REAL, FAR, DEGRADED)
DEGRADED_LESIONS = 20
QUALITY_FIT_IMAGES = 2000
# Far-corpus catch rate of the score alone at these shares of test lesions refused (the
# threshold taken on the test split itself): a comparison of scores free of the threshold.
TEST_REFUSAL_SHARES = (0.01, 0.05)
NO_QUALITY = (
    "none: the version has no gate.quality, so, as in the gateway (without SKIN_QUALITY_* "
    "settings), no quality check runs; --fit-quality shows what export would choose"
)


@dataclass(frozen=True)
class GateSettings:
    """What :func:`measure_versions` reads and how much.

    Args:
        data_dir: the recorded split's data (default: recorded, else HAM10000_DIR).
        real_lesions: folder of full-size lesion photos (None: skipped).
        max_test: a seeded sample of at most this many test images (None: all).
        degraded_lesions: test-split photos (one per lesion) the degraded corpus is built from.
        seed: seed of every sample and of the corpora.
        batch_size: images per forward pass.
        fit_quality: for a version without ``gate.quality``, fit the thresholds here as
            export would (else no quality check runs, as in the gateway).
        quality_fit_images: training images to fit them on.
    """

    data_dir: str | None = None
    real_lesions: str | None = None
    max_test: int | None = None
    degraded_lesions: int = DEGRADED_LESIONS
    seed: int = 0
    batch_size: int = 64
    fit_quality: bool = False
    quality_fit_images: int = QUALITY_FIT_IMAGES


@dataclass
class GateModel:
    """An exported version, ready to gate images the way the gateway does."""

    folder: Path
    metadata: VersionMetadata
    model: torch.jit.ScriptModule
    quality: QualityThresholds | None  # None: no quality checks (a version without gate.quality)
    quality_source: str
    ood_threshold: float | None

    @property
    def name(self) -> str:
        model = self.metadata.name or self.folder.parent.name
        return f"{model}_v{self.metadata.version or self.folder.name}"

    @property
    def input_size(self) -> tuple[int, int]:
        return self.metadata.input_size

    @property
    def score_kind(self) -> str | None:
        ood = (self.metadata.gate or {}).get("ood")
        kind = ood.get("score") if isinstance(ood, dict) else None
        return str(kind) if kind is not None else None


def load_version(folder: Path | str) -> GateModel:
    """``model.pt`` (TorchScript) and ``metadata.json`` of an exported version.

    Raises:
        ConfigError: not a version folder, or unreadable metadata.
    """
    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file() or not (folder / METADATA_FILE).is_file():
        raise ConfigError(
            f"{folder} is not an exported version (model.pt and metadata.json): pass "
            "model_repository/<name>/<version>"
        )
    try:
        meta = read_metadata(folder)
        quality = meta.quality_thresholds()
    except MetadataError as exc:
        raise ConfigError(str(exc)) from None
    with quiet_torchscript():
        scripted = torch.jit.load(str(folder / MODEL_FILE), map_location="cpu").eval()
    # A fusion version gets every clinical field unknown: these corpora come without a form.
    model = ExportedVersion(scripted, meta.clinical_dim()).eval()
    source = "metadata.json gate.quality" if quality is not None else NO_QUALITY
    return GateModel(folder, meta, model, quality, source, meta.ood_threshold())


@torch.no_grad()
def model_outputs(
    model: torch.nn.Module, inputs: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(probabilities [N, 7], ood score [N] or None)`` of ``uint8 [N, H, W, 3]`` inputs.

    A version with the gate returns ``(probabilities, score [N, 1], ...)``; one without it the
    probabilities alone, or with an empty placeholder where the score would be
    (:func:`training.export.torchscript.served_outputs`).
    """
    with quiet_torchscript():
        out = model(torch.from_numpy(np.ascontiguousarray(inputs)))
    probs, score, _ = served_outputs(out)
    if score is None:
        return probs.float().numpy(), None
    return probs.float().numpy(), score.float().reshape(len(inputs), -1)[:, 0].numpy()


@dataclass(frozen=True)
class Judged:
    """One image through the gate: its features, score and the gate's answer."""

    corpus: str
    kind: str
    name: str
    width: int
    height: int
    features: ImageFeatures
    quality: str | None  # reason code of the first failed quality check, None when all pass
    score: float | None  # the model's out-of-distribution score (None: the version has none)
    ood: bool | None  # the score alone refuses it (None: no score or no threshold)

    @property
    def reason(self) -> str | None:
        """The gateway's answer: the first failed check's code, or None (diagnosed)."""
        return self.quality or (OUT_OF_DISTRIBUTION if self.ood else None)

    def row(self) -> dict[str, Any]:
        return {
            "corpus": self.corpus,
            "kind": self.kind,
            "name": self.name,
            "width": self.width,
            "height": self.height,
            **self.features.to_dict(),
            "quality": self.quality or "",
            "score": self.score,
            "ood": self.ood,
            "reason": self.reason or "",
        }


Item = tuple[str, str, str, np.ndarray]  # corpus, kind, name, rgb


def _chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def judge(gm: GateModel, items: Iterable[Item], batch_size: int = 64) -> list[Judged]:
    """Every image through the gate, in order; images are read lazily, ``batch_size`` at once.

    Without quality thresholds (``gm.quality`` None) no quality check runs, as in the gateway.
    """
    out = []
    for chunk in _chunks(items, batch_size):
        inputs, pending = [], []
        for corpus, kind, name, rgb in chunk:
            height, width = rgb.shape[:2]
            model_input = eval_resize(rgb, gm.input_size)
            features = measure(model_input, width, height)
            refusal = None
            if gm.quality is not None:
                refusal = check_geometry(width, height, gm.quality) or check_content(
                    features, gm.quality
                )
            inputs.append(model_input)
            pending.append((corpus, kind, name, width, height, features, refusal))
        _, scores = model_outputs(gm.model, np.stack(inputs))
        for i, (corpus, kind, name, width, height, features, refusal) in enumerate(pending):
            score = None if scores is None else float(scores[i])
            ood = None
            if score is not None and gm.ood_threshold is not None:
                ood = out_of_distribution(score, gm.ood_threshold) is not None
            quality = refusal.code if refusal else None
            out.append(Judged(corpus, kind, name, width, height, features, quality, score, ood))
    return out


def recorded_settings(meta: VersionMetadata) -> tuple[dict[str, Any], str]:
    """The data-module settings of a version's split, and where they came from."""
    checkpoint = (meta.checkpoint or {}).get("path")
    if hp := datamodule_hparams(checkpoint):
        return hp, f"checkpoint {checkpoint}"
    data = (meta.reference or {}).get("data")
    if isinstance(data, dict) and data:
        return dict(data), "the version's drift reference (metadata.json reference.data)"
    return {}, ""


def _sample(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    return frame.sample(n=n, random_state=seed) if n is not None and len(frame) > n else frame


def _frame_items(frame: pd.DataFrame, corpus: str) -> Iterator[Item]:
    for row in frame.itertuples(index=False):
        yield corpus, str(row.label), str(row.image_id), read_image(str(row.path))


def _corpus_items(images: Sequence[CorpusImage]) -> Iterator[Item]:
    for image in images:
        yield image.group, image.kind, image.name, image.rgb


def fit_quality(gm: GateModel, train: pd.DataFrame, n: int, seed: int) -> QualityThresholds:
    """Thresholds fitted as export fits them, on a seeded sample of ``train``."""
    sample = _sample(train, n, seed)
    features = []
    for path in sample["path"]:
        rgb = read_image(str(path))
        features.append(measure(eval_resize(rgb, gm.input_size), rgb.shape[1], rgb.shape[0]))
    return fit_quality_thresholds(features, gm.input_size)


# --- summaries ---------------------------------------------------------------------------------


def rate(k: int, n: int, level: float = 0.95) -> dict[str, Any]:
    """``k`` of ``n`` with its exact (Clopper-Pearson) two-sided interval."""
    if n == 0:
        return {"count": 0, "n": 0, "rate": None, "ci95": None}
    a = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return {"count": k, "n": n, "rate": k / n, "ci95": [round(low, 4), round(high, 4)]}


def summarise(judged: Sequence[Judged]) -> dict[str, Any]:
    """Refused (the whole gate), by reason, by the quality checks alone, by the score alone."""
    n = len(judged)
    reasons = Counter(j.reason for j in judged if j.reason)
    scored = [j for j in judged if j.ood is not None]
    return {
        "n": n,
        "refused": rate(sum(1 for j in judged if j.reason), n),
        "reasons": {code: reasons[code] for code in REASON_CODES if reasons[code]},
        "quality_alone": rate(sum(1 for j in judged if j.quality), n),
        "score_alone": rate(sum(1 for j in scored if j.ood), len(scored)) if scored else None,
    }


def by_kind(judged: Sequence[Judged]) -> dict[str, Any]:
    """:func:`summarise` over all and per kind (in first-seen order)."""
    kinds = dict.fromkeys(j.kind for j in judged)
    return {
        "overall": summarise(judged),
        "kinds": {k: summarise([j for j in judged if j.kind == k]) for k in kinds},
    }


QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)


def quantiles(values: np.ndarray) -> dict[str, float] | None:
    if not len(values):
        return None
    q = np.quantile(values, QUANTILES)
    return {f"p{round(p * 100):g}": float(v) for p, v in zip(QUANTILES, q, strict=True)}


def _auc(inside: np.ndarray, outside: np.ndarray) -> float | None:
    if not len(inside) or not len(outside):
        return None
    labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return float(roc_auc_score(labels, np.r_[inside, outside]))


def score_figures(scores: dict[str, np.ndarray], threshold: float | None) -> dict[str, Any]:
    """AUCs (test lesions = negatives, higher score = out of distribution), quantiles per
    corpus, and the far catch rate at fixed shares of test lesions refused."""
    test = scores.get(TEST, np.array([]))
    at_share = {}
    for share in TEST_REFUSAL_SHARES:
        if len(test) and len(scores.get(FAR, [])):
            cut = float(np.quantile(test, 1 - share))
            at_share[f"{share:g}"] = {
                "threshold": cut,
                "far_caught": float(np.mean(scores[FAR] > cut)),
                "degraded_caught": (
                    float(np.mean(scores[DEGRADED] > cut))
                    if len(scores.get(DEGRADED, []))
                    else None
                ),
            }
    return {
        "threshold": threshold,
        "auc": {
            "test_vs_far": _auc(test, scores.get(FAR, np.array([]))),
            "test_vs_degraded": _auc(test, scores.get(DEGRADED, np.array([]))),
        },
        "quantiles": {c: quantiles(v) for c, v in scores.items()},
        "far_caught_at_test_refusal": at_share,
    }


# --- one version -------------------------------------------------------------------------------


@dataclass
class Corpora:
    """What every version is measured on, built once (the far corpus) or once per split."""

    settings: GateSettings
    far: list[CorpusImage] = field(default_factory=list)
    real: list[tuple[str, np.ndarray]] = field(default_factory=list)
    splits: dict[str, SplitData] = field(default_factory=dict)
    degraded: dict[tuple[str, ...], list[CorpusImage]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.far = far_from_lesion(self.settings.seed)
        folder = self.settings.real_lesions
        if folder:
            if not Path(folder).is_dir():
                raise ConfigError(f"--real-lesions {folder} is not a folder")
            self.real = [
                (Path(p).stem, read_image(p)) for p in sorted(index_images(Path(folder)).values())
            ]

    def split(self, recorded: dict[str, Any], size: tuple[int, int]) -> SplitData:
        key = repr(sorted((k, str(v)) for k, v in recorded.items()))
        if key not in self.splits:
            self.splits[key] = rebuild_split(recorded, size, self.settings.data_dir)
        return self.splits[key]

    def degraded_from(self, test: pd.DataFrame) -> tuple[list[CorpusImage], list[str]]:
        """The degraded corpus of one photo per lesion of a seeded sample of ``test``."""
        lesions = test.drop_duplicates("group")
        sample = _sample(lesions, self.settings.degraded_lesions, self.settings.seed)
        paths = tuple(sorted(str(p) for p in sample["path"]))
        if paths not in self.degraded:
            self.degraded[paths] = degraded([Path(p) for p in paths], self.settings.seed)
        return self.degraded[paths], [Path(p).stem for p in paths]


def _notes(
    gm: GateModel, split: SplitData, split_source: str, real_in: dict[str, int]
) -> list[str]:
    notes = []
    if split.synthetic:
        notes.append("SYNTHETIC data: the in-distribution figures say nothing about real lesions.")
    if not split_source:
        notes.append(
            "The version's split could not be recovered (its checkpoint is not here and it has "
            "no drift reference): the default split was used, so the test split may hold images "
            "the model was trained on."
        )
    trained_on = gm.metadata.dataset_version or (gm.metadata.reference or {}).get("dataset_version")
    if trained_on and trained_on != split.dataset_version:
        notes.append(
            f"The data (version {split.dataset_version[:16]}) are not those the version's split "
            f"was made on ({str(trained_on)[:16]}): the test split may hold training images, "
            "and its images may differ from those the gate's thresholds were chosen on."
        )
    if gm.ood_threshold is None:
        notes.append(
            "This version has no out-of-distribution output (no gate.ood in metadata.json): "
            "measured on the quality checks only."
            if gm.score_kind is None
            else "gate.ood has no usable threshold: the score is reported, never applied."
        )
    if gm.quality is None:
        notes.append(
            "This version has no gate.quality: as in the gateway (without SKIN_QUALITY_* "
            "settings), no quality check runs. --fit-quality shows what export would choose."
        )
    elif not gm.quality_source.startswith("metadata"):
        notes.append(f"This version has no gate.quality: {gm.quality_source}.")
    seen = {k: v for k, v in real_in.items() if k != TEST and v}
    if seen:
        shown = ", ".join(f"{v} in {k}" for k, v in seen.items())
        notes.append(
            f"Of the real lesion photos, {shown} of the split measured here (as images of the "
            "same lesions at full size): their false refusals are optimistic."
        )
    return notes


def measure_version(gm: GateModel, corpora: Corpora) -> dict[str, Any]:
    """All the figures of one version (``gate.json``), plus what the files need."""
    s = corpora.settings
    recorded, split_source = recorded_settings(gm.metadata)
    split = corpora.split(recorded, gm.input_size)
    if gm.quality is None and s.fit_quality:
        n = s.quality_fit_images
        gm.quality = fit_quality(gm, split.splits["train"], n, s.seed)
        gm.quality_source = (
            f"thresholds fitted here as export fits them, on {min(n, len(split.splits['train']))} "
            "training images (contracts.quality.fit_quality_thresholds)"
        )
    test = _sample(split.splits[TEST], s.max_test, s.seed)
    if test.empty:
        raise DataError("the version's test split is empty: nothing to measure false refusals on")
    degraded_images, degraded_sources = corpora.degraded_from(test)
    log.info(
        "%s: gating %d test, %d real, %d far, %d degraded images",
        gm.name,
        len(test),
        len(corpora.real),
        len(corpora.far),
        len(degraded_images),
    )
    judged = {
        TEST: judge(gm, _frame_items(test, TEST), s.batch_size),
        REAL: judge(gm, ((REAL, "photo", n, rgb) for n, rgb in corpora.real), s.batch_size),
        FAR: judge(gm, _corpus_items(corpora.far), s.batch_size),
        DEGRADED: judge(gm, _corpus_items(degraded_images), s.batch_size),
    }
    ids = {name: set(frame["image_id"].astype(str)) for name, frame in split.splits.items()}
    real_in = {
        name: sum(1 for n, _ in corpora.real if n in members) for name, members in ids.items()
    }
    scores = {
        c: np.array([j.score for j in js if j.score is not None], dtype=np.float64)
        for c, js in judged.items()
    }
    has_score = any(len(v) for v in scores.values())
    ood_meta = (gm.metadata.gate or {}).get("ood")
    figures = {
        "version": {
            "name": gm.name,
            "folder": str(gm.folder),
            "model_name": gm.metadata.model_name,
            "input_size": list(gm.input_size),
            "score": gm.score_kind,
            "ood_threshold": gm.ood_threshold,
            "ood": {
                k: v for k, v in (ood_meta or {}).items() if isinstance(v, int | float | str | bool)
            },
            "quality_thresholds": gm.quality.to_dict() if gm.quality else None,
            "quality_source": gm.quality_source,
        },
        "data": {
            **split.settings,
            "split_from": split_source or "defaults (not recovered)",
            "dataset_version": split.dataset_version,
            "test_images": len(test),
            "test_split_images": len(split.splits[TEST]),
            "test_lesions": int(test["group"].nunique()),
            "real_lesions": s.real_lesions,
            "real_images": len(corpora.real),
            "real_in_split": real_in,
            "far_images": len(corpora.far),
            "degraded_sources": degraded_sources,
            "seed": s.seed,
        },
        "notes": _notes(gm, split, split_source, real_in),
        "in_distribution": {TEST: summarise(judged[TEST]), REAL: summarise(judged[REAL])},
        FAR: by_kind(judged[FAR]),
        DEGRADED: by_kind(judged[DEGRADED]),
        "score": score_figures(scores, gm.ood_threshold) if has_score else None,
    }
    rows = [j.row() for js in judged.values() for j in js]
    kinds = {
        k: np.array([j.score for j in judged[FAR] if j.kind == k and j.score is not None])
        for k in dict.fromkeys(j.kind for j in judged[FAR])
    }
    return {"figures": figures, "rows": rows, "scores": scores, "far_kinds": kinds}


def measure_versions(
    folders: Sequence[Path | str], out: Path | str, settings: GateSettings | None = None
) -> list[Path]:
    """Measure each version and write its report under ``out``; returns the report folders
    (and writes ``comparison.md``/``.json`` beside them for several versions)."""
    settings = settings or GateSettings()
    corpora = Corpora(settings)
    written: list[Path] = []
    summaries = []
    for folder in folders:
        gm = load_version(folder)
        measured = measure_version(gm, corpora)
        target = Path(out) / gm.name
        if target in written:  # the same name from two repositories (or twice)
            target = Path(out) / f"{gm.name}_{len(written) + 1}"
            measured["figures"]["version"]["name"] = target.name
        ood_gate_report.write(measured, target)
        written.append(target)
        summaries.append(measured["figures"])
        print(ood_gate_report.one_line(measured["figures"]))
    if len(summaries) > 1:
        ood_gate_report.write_comparison(summaries, Path(out))
    return written


# --- command line ------------------------------------------------------------------------------


def version_folders(args: argparse.Namespace) -> list[Path]:
    """The version folders the command line names (default: the served one)."""
    folders = [Path(p) for p in args.folders]
    model_dir = Path(args.repository) / args.name
    folders += [model_dir / str(v) for v in args.version]
    if not folders:
        served = served_version(model_dir)
        if served is None:
            raise ConfigError(
                f"{model_dir} serves no version: pass --version N or a version folder"
            )
        folders = [model_dir / str(served)]
    return folders


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.evaluation.ood_gate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("folders", nargs="*", help="version folders (model_repository/<name>/<v>)")
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--version", type=int, nargs="+", default=[], help="version numbers")
    p.add_argument("--out", default="reports/gate", help="reports folder")
    p.add_argument(
        "--data-dir", help="the recorded split's data (default: recorded, else HAM10000_DIR)"
    )
    p.add_argument(
        "--real-lesions",
        default=os.environ.get("REAL_LESIONS_DIR"),
        help="folder of full-size lesion photos (default REAL_LESIONS_DIR; none: skipped)",
    )
    p.add_argument("--max-test", type=int, help="quick look: a seeded sample of test images")
    p.add_argument("--degraded-lesions", type=int, default=DEGRADED_LESIONS)
    p.add_argument(
        "--fit-quality",
        action="store_true",
        help="a version without gate.quality: fit its thresholds here as export would "
        "(default: no quality check, as the gateway serves it)",
    )
    p.add_argument("--quality-fit-images", type=int, default=QUALITY_FIT_IMAGES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 2 on a user-facing error."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parse(argv)
    settings = GateSettings(
        data_dir=args.data_dir,
        real_lesions=args.real_lesions,
        max_test=args.max_test,
        degraded_lesions=args.degraded_lesions,
        seed=args.seed,
        batch_size=args.batch_size,
        fit_quality=args.fit_quality,
        quality_fit_images=args.quality_fit_images,
    )
    try:
        written = measure_versions(version_folders(args), args.out, settings)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for folder in written:
        print(f"report: {folder / 'gate.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
