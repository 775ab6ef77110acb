"""The gate of an exported version, computed from the split its checkpoint was trained with.

``metadata.json``'s ``gate`` holds two things, both chosen here at export:

- ``quality``: the image-quality thresholds (:func:`contracts.quality.fit_quality_thresholds`)
  from EVERY training image (extreme percentiles need them all; no network pass), each
  measured as the gateway measures an upload: geometry of the original file, the rest on its
  ``eval_resize`` at the version's input size.
- ``ood``: the out-of-distribution score of :class:`training.export.ood.GatedModel`. For
  ``knn`` (the default) the bank holds up to ``max_images`` seeded, class-stratified training
  images' penultimate features and colour histograms, and each space's distance is scaled by
  its 99th percentile on the validation split; for ``mahalanobis`` the class Gaussians are
  fitted on those images' features. The threshold is then chosen on EVERY validation image so
  that the WHOLE gate refuses at most :data:`TARGET_FALSE_REFUSAL` of new lesion photos with
  :data:`GATE_CONFIDENCE` (:func:`choose_gate_threshold`: the validation refusals' one-sided
  Clopper-Pearson upper bound at most the target, as the referral thresholds hold their
  sensitivity): the quality checks' validation refusals use part of that budget, the score the
  rest. The rule, the rates reached and the bound are recorded (``rule``, ``confidence``,
  ``validation_false_refusal``, ``validation_false_refusal_upper_bound``,
  ``validation_quality_refusal``, ``validation_score_refusal``).

When the split cannot be rebuilt here (no recorded data module, data missing, synthetic data)
export warns and writes no gate, like the referral thresholds (``gate: null``; the gateway
then applies its own settings or none).

Cost: see docs/results.md, "Refusing what is not a lesion photo" (EfficientNet-Lite0 at
112x150 on the 2-core CPU, measured with its export command); the tests' smoke exports take a
few seconds.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from contracts.errors import ConfigError, DataError
from contracts.images import eval_resize, read_image
from contracts.labels import CLASS_INDEX
from contracts.quality import (
    HIGH_PERCENTILE,
    LOW_PERCENTILE,
    ImageFeatures,
    check_content,
    check_geometry,
    fit_quality_thresholds,
    measure,
)
from training.datamodule import clinical_rows
from training.export.ood import (
    DEFAULT_OOD_SCORE,
    HISTOGRAM_BINS,
    OOD_SCORES,
    GatedModel,
    Neighbours,
    allowed_refusals,
    check_split,
    choose_threshold,
    colour_histogram,
    fit_gaussians,
    gaussians_metadata,
    refusal_upper_bound,
    split_classifier,
)
from training.recorded_split import datamodule_hparams, rebuild_split
from training.reference_stats import data_unreachable

log = logging.getLogger(__name__)

GATE_IMAGES = 2000
TARGET_FALSE_REFUSAL = 0.01
GATE_CONFIDENCE = 0.95
CONFIDENCE_RULE = "clopper_pearson_upper_bound"
CONFORMAL_RULE = "split_conformal"
BATCH_SIZE = 64


@dataclass
class Gate:
    """A computed gate: the module to serve and what ``metadata.json`` says of it.

    Attributes:
        model: the :class:`GatedModel` (eval mode) the thresholds were chosen with.
        metadata: ``VersionMetadata.gate``: ``{"quality": {...}, "ood": {...}}``.
        seconds: wall time the computation took (reading images included).
    """

    model: GatedModel
    metadata: dict[str, Any]
    seconds: float


def check_options(kind: str, max_images: int) -> None:
    """Raise ConfigError for an unknown score kind or a non-positive image count."""
    if kind not in OOD_SCORES:
        raise ConfigError(f"--ood-score {kind!r} is unknown; choose one of {', '.join(OOD_SCORES)}")
    if max_images < 1:
        raise ConfigError(
            f"--gate-images must be at least 1, got {max_images}: use --no-gate to export "
            "without the gate"
        )


def stratified_sample(frame: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` rows, each class in its share of ``frame`` (largest remainders; at least one row of
    every class, so more than ``n`` when ``n`` is below the number of classes), seeded, in
    ``frame``'s order; all rows when there are no more than ``n``."""
    if len(frame) <= n:
        return frame
    counts = frame["label"].value_counts().sort_index()
    quota = n * counts / len(frame)
    take = np.minimum(counts, np.maximum(1, np.floor(quota))).astype(int)
    for label in (quota - np.floor(quota)).sort_values(ascending=False, kind="stable").index:
        if take.sum() >= n:
            break
        take[label] += int(take[label] < counts[label])
    parts = [
        frame[frame["label"] == label].sample(n=int(k), random_state=seed)
        for label, k in take.items()
    ]
    return pd.concat(parts).sort_index()


def _batches(paths: list[str], size: tuple[int, int]) -> Any:
    """``(uint8 [B, H, W, 3] tensor, [(width, height), ...])`` per batch of image files."""
    for start in range(0, len(paths), BATCH_SIZE):
        originals = [read_image(p) for p in paths[start : start + BATCH_SIZE]]
        resized = np.stack([eval_resize(img, size) for img in originals])
        yield torch.from_numpy(resized), [(img.shape[1], img.shape[0]) for img in originals]


def choose_gate_threshold(
    scores: np.ndarray, passed: np.ndarray, confidence: float = GATE_CONFIDENCE
) -> tuple[float, int, str]:
    """The OOD threshold for validation ``scores`` of which the quality checks let ``passed``
    through, so that the WHOLE gate refuses at most :data:`TARGET_FALSE_REFUSAL` of new images
    with ``confidence``.

    The gate may refuse ``r`` validation images (:func:`training.export.ood.allowed_refusals`);
    the quality checks' refusals count first, and the score refuses the rest: the threshold is
    the ``rank``-th smallest score of the passed images, so that ``r`` minus the quality
    refusals are over it (fewer on ties). With too few images for the bound (about 300 for
    1 %), the split-conformal quantile of the passed images with what the checks leave, which
    holds on average only. When the checks alone refuse more than ``r``, the threshold is the
    largest passed score (the score refuses none of them), with a warning.

    Returns:
        ``(threshold, rank, rule)``: ``rule`` is :data:`CONFIDENCE_RULE` or
        :data:`CONFORMAL_RULE`.
    """
    scores, passed = np.asarray(scores, np.float64), np.asarray(passed, bool)
    kept = np.sort(scores[passed])
    if not len(kept):
        log.warning("the quality checks refuse every validation image: no OOD threshold")
        return float(scores.max()), len(scores), CONFORMAL_RULE
    quality_refusals = int((~passed).sum())
    allowed = allowed_refusals(len(scores), TARGET_FALSE_REFUSAL, confidence)
    if allowed is None:
        log.warning(
            "only %d validation images: the %.0f %% false-refusal bound cannot be shown with "
            "%.2f confidence; the OOD threshold is the split-conformal quantile (holds on average)",
            len(scores),
            100 * TARGET_FALSE_REFUSAL,
            confidence,
        )
        budget = (TARGET_FALSE_REFUSAL - quality_refusals / len(scores)) / passed.mean()
        if budget <= 0:
            return float(kept[-1]), len(kept), CONFORMAL_RULE
        threshold, _, rank = choose_threshold(kept, budget)
        return threshold, rank, CONFORMAL_RULE
    if quality_refusals > allowed:
        log.warning(
            "the quality checks alone refuse %d of %d validation images, more than the %d the "
            "%.0f %% bound allows: the OOD threshold is the largest score they let through",
            quality_refusals,
            len(scores),
            allowed,
            100 * TARGET_FALSE_REFUSAL,
        )
        return float(kept[-1]), len(kept), CONFIDENCE_RULE
    rank = max(len(kept) - (allowed - quality_refusals), 1)
    return float(kept[rank - 1]), rank, CONFIDENCE_RULE


@torch.no_grad()
def compute_gate(  # noqa: PLR0913 (keyword-only options, ExportOptions' gate fields)
    train: pd.DataFrame,
    val: pd.DataFrame,
    classifier: nn.Module,
    input_size: tuple[int, int],
    *,
    temperature: float = 1.0,
    kind: str = DEFAULT_OOD_SCORE,
    max_images: int = GATE_IMAGES,
    seed: int = 0,
    served: nn.Module | None = None,
    confidence: float = GATE_CONFIDENCE,
) -> Gate:
    """The gate of ``classifier`` trained on ``train`` and validated on ``val`` (module doc).

    Args:
        train: training rows (``training.data`` columns, readable ``path``).
        val: validation rows; every one is scored to choose the threshold.
        classifier: ``uint8 [N, H, W, 3] -> logits`` (an ``ImageClassifier``), eval mode.
        input_size: the version's ``(height, width)``.
        temperature: the version's softmax temperature.
        kind: the score, one of :data:`training.export.ood.OOD_SCORES`.
        max_images: training images read for the quality thresholds and the Gaussians.
        seed: seed of the training sample.
        served: the served logits when they are not ``classifier``'s (TTA, ensemble).
        confidence: with which the whole gate's false-refusal rate is bounded
            (:func:`choose_gate_threshold`).

    Raises:
        ConfigError: bad options, or a classifier that cannot be split (mahalanobis).
        DataError: an empty split, or unreadable images.
    """
    check_options(kind, max_images)
    if train.empty or val.empty:
        raise DataError(
            f"the gate needs training and validation images (got {len(train)} and {len(val)})"
        )
    start = time.perf_counter()
    classifier.eval()
    detector = split_classifier(classifier)
    sample = stratified_sample(train, max_images, seed)
    quality: list[ImageFeatures] = []
    features, colours = [], []
    needs_features = kind in ("mahalanobis", "knn")
    # The quality thresholds are extreme percentiles: every training image counts (no network
    # pass, only decode, resize and the features: about 3 ms an image).
    for images, sizes in _batches(train["path"].tolist(), input_size):
        quality += [measure(img, w, h) for img, (w, h) in zip(images.numpy(), sizes, strict=True)]
    for i, (images, _sizes) in enumerate(_batches(sample["path"].tolist(), input_size)):
        # The first batch proves the split gives the classifier's own logits.
        if i == 0:
            features.append(check_split(detector, classifier, images)[1].double().numpy())
        elif needs_features:
            features.append(detector(images)[1].double().numpy())
        if kind == "knn":
            colours.append(colour_histogram(images).double().numpy())
    thresholds = fit_quality_thresholds(quality, input_size)
    ood: dict[str, Any] = {"score": kind}
    gaussians, neighbours = None, None
    if kind == "mahalanobis":
        labels = np.array([CLASS_INDEX[c] for c in sample["label"]])
        gaussians = fit_gaussians(np.concatenate(features), labels)
        ood.update(gaussians_metadata(gaussians))
    val_batches = list(_batches(list(val["path"]), input_size))
    # The validation rows' own metadata, for a fusion model's logits (the energy and msp scores
    # read them; the knn and mahalanobis scores read the image features alone).
    val_clinical = torch.from_numpy(clinical_rows(val))
    val_rows = [val_clinical[i : i + BATCH_SIZE] for i in range(0, len(val), BATCH_SIZE)]
    if kind == "knn":
        neighbours = Neighbours(np.concatenate(features), np.concatenate(colours))
        val_features = np.concatenate([detector(x)[1].double().numpy() for x, _ in val_batches])
        val_colours = np.concatenate([colour_histogram(x).double().numpy() for x, _ in val_batches])
        scales = np.percentile(neighbours.distances(val_features, val_colours), 99, axis=0)
        neighbours.scales = (max(float(scales[0]), 1e-6), max(float(scales[1]), 1e-6))
        ood.update(
            k=neighbours.k,
            scales={"features": neighbours.scales[0], "colours": neighbours.scales[1]},
            histogram_bins=HISTOGRAM_BINS,
        )
    model = GatedModel(detector, kind, temperature, gaussians, served, neighbours).eval()
    scores = np.concatenate(
        [
            model(x, rows)[1].double().numpy().ravel()
            for (x, _), rows in zip(val_batches, val_rows, strict=True)
        ]
    )
    # The whole gate refuses at most the target with confidence: the quality checks' validation
    # refusals use part of it, the score the rest (among the images the checks let through).
    passed = np.array(
        [
            check_geometry(w, h, thresholds) is None
            and check_content(measure(img, w, h), thresholds) is None
            for x, sizes in val_batches
            for img, (w, h) in zip(x.numpy(), sizes, strict=True)
        ]
    )
    threshold, rank, rule = choose_gate_threshold(scores, passed, confidence)
    refused = int(np.sum(~passed | (scores > threshold)))
    achieved = refused / len(scores)
    ood.update(
        threshold=threshold,
        target_false_refusal=TARGET_FALSE_REFUSAL,
        rule=rule,
        confidence=confidence if rule == CONFIDENCE_RULE else None,
        validation_false_refusal=achieved,
        validation_false_refusal_upper_bound=refusal_upper_bound(refused, len(scores), confidence),
        validation_score_refusal=float(np.mean(scores > threshold)),
        validation_quality_refusal=1 - float(passed.mean()),
        validation_images=len(scores),
        rank=rank,
        fit_images=len(sample) if needs_features else 0,
        feature_dim=int(features[0].shape[1]),
    )
    metadata = {
        "quality": {
            **thresholds.to_dict(),
            "percentiles": [LOW_PERCENTILE, HIGH_PERCENTILE],
            "images": len(quality),
        },
        "ood": ood,
    }
    seconds = time.perf_counter() - start
    log.info(
        "gate: %s threshold %.4g refuses %.2f %% of %d validation images; quality from %d "
        "training images (%.1f s)",
        kind,
        threshold,
        100 * achieved,
        len(scores),
        len(quality),
        seconds,
    )
    return Gate(model, metadata, seconds)


def gate_for_checkpoint(  # noqa: PLR0913 (keyword-only options, as compute_gate)
    checkpoint: str | Path | None,
    classifier: nn.Module,
    input_size: tuple[int, int],
    data_dir: str | Path | None = None,
    *,
    temperature: float = 1.0,
    kind: str = DEFAULT_OOD_SCORE,
    max_images: int = GATE_IMAGES,
    served: nn.Module | None = None,
    overrides: dict[str, Any] | None = None,
) -> Gate | None:
    """The gate on the split ``checkpoint`` was trained with (rebuilt on ``data_dir``, else the
    recorded folder, else ``HAM10000_DIR``); None with a warning when that split cannot be
    rebuilt here or is synthetic (never raises for that).

    Args:
        checkpoint: the ``.ckpt`` whose recorded data module gives the split (None: none).
        classifier, input_size, temperature, kind, max_images, served: as
            :func:`compute_gate`.
        data_dir: a HAM10000-layout folder to rebuild the split on.
        overrides: split settings to use instead of the recorded ones (the evaluation's
            ``seed``, ``val_fraction``, ``test_fraction``), as ``rebuild_split`` takes them.

    Raises:
        ConfigError: unknown ``kind`` or ``max_images < 1``; a classifier that cannot be split.
    """
    check_options(kind, max_images)
    recorded = datamodule_hparams(checkpoint)
    why = (
        f"{checkpoint} records no data module (not trained by `python -m training fit`)"
        if not recorded and data_dir is None
        else data_unreachable(recorded, data_dir)
    )
    if why is None:
        try:
            split = rebuild_split(
                recorded, input_size, str(data_dir) if data_dir else None, overrides
            )
            if split.synthetic:
                why = "the rebuilt split is synthetic (a gate fitted on it refuses real photos)"
            else:
                return compute_gate(
                    split.splits["train"],
                    split.splits["val"],
                    classifier,
                    input_size,
                    temperature=temperature,
                    kind=kind,
                    max_images=max_images,
                    served=served,
                )
        except DataError as exc:
            why = str(exc)
    return no_gate(why)


def no_gate(why: str) -> None:
    """Warn (and log) that the version gets no gate, and why; returns None."""
    message = (
        f"metadata.json gets `gate: null` (the model has no out-of-distribution output and the "
        f"gateway only its own quality settings for this version): {why}. Pass "
        "--reference-data DIR (the HAM10000-layout folder it was trained on) or set "
        "HAM10000_DIR, or export with --no-gate to say so"
    )
    warnings.warn(message, stacklevel=3)
    log.warning(message)
