"""The referral operating points and the decision rule of an exported checkpoint, chosen on its
own validation split.

``python -m training evaluate --export`` chooses them as part of a full evaluation; a plain
``python -m training export`` chooses them here the same way (same rules, same validation
split, the exported probabilities; the decision rule's priors from the training split), so no
version is written without validated thresholds when its data can be read. When it cannot,
export warns and writes ``thresholds: {}`` and no ``decision`` (the argmax), and the gateway
gives no referral advice for that version.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from contracts import decision
from contracts.errors import DataError
from contracts.labels import CLASS_INDEX
from training.evaluation import thresholds as th
from training.export.wrapper import ProbabilityModel
from training.inference import predict
from training.recorded_split import datamodule_hparams, rebuild_split
from training.reference_stats import data_unreachable

log = logging.getLogger(__name__)


def validation_thresholds(
    checkpoint: str | Path,
    classifier: nn.Module,
    input_size: tuple[int, int],
    temperature: float = 1.0,
    data_dir: str | Path | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """``metadata.json``'s ``thresholds`` and ``decision``: the operating points of the exported
    probabilities (``classifier`` at ``temperature``) on the checkpoint's validation split,
    chosen by :mod:`training.evaluation.thresholds`' rule, and the decision rule of
    :func:`contracts.decision.choose` on the same cases (None when the argmax is best);
    ``({}, None)`` with a warning when the split cannot be rebuilt here (never raises for
    that)."""
    recorded = datamodule_hparams(checkpoint)
    why = (
        f"{checkpoint} records no data module (not trained by `python -m training fit`)"
        if not recorded and data_dir is None
        else data_unreachable(recorded, data_dir)
    )
    if why is None:
        try:
            split = rebuild_split(recorded, input_size, str(data_dir) if data_dir else None)
            val = split.splits["val"]
            probs = predict(ProbabilityModel(classifier, temperature), val, input_size)
            labels = np.array([CLASS_INDEX[c] for c in val["label"]])
            points = th.operating_points(probs, labels)
            rule = decision.choose(
                probs, labels, decision.priors_from_labels(split.splits["train"]["label"])
            )
        except DataError as exc:  # e.g. a validation split without melanomas
            why = str(exc)
        else:
            named = None if rule.rule == decision.ARGMAX else rule.to_metadata()
            return th.thresholds_metadata(points), named
    message = (
        f"metadata.json gets `thresholds: {{}}` (the gateway gives no referral advice for this "
        f"version): {why}. Pass --reference-data DIR (the HAM10000-layout folder it was "
        "trained on) or set HAM10000_DIR, or export with `python -m training evaluate --export`"
    )
    warnings.warn(message, stacklevel=2)
    log.warning(message)
    return {}, None
