"""``evaluate --export best``: the variant is chosen on the validation split, never the test."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from contracts.errors import ConfigError
from contracts.labels import CLASSES, NUM_CLASSES
from training.evaluation.cli import _parse, best_on_validation, config_from_args
from training.evaluation.results import Variant
from training.evaluation.scoring import Cases


def _onehot(pred: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES)[pred]


def _evaluation(
    val_preds: dict[str, np.ndarray], test_preds: dict[str, np.ndarray]
) -> tuple[SimpleNamespace, np.ndarray]:
    labels = np.repeat(np.arange(NUM_CLASSES), 10)
    frame = pd.DataFrame({"label": [CLASSES[i] for i in labels], "group": range(len(labels))})
    variants = {
        key: Variant(
            key, key, _onehot(val_preds[key]), _onehot(test_preds.get(key, val_preds[key]))
        )
        for key in val_preds
    }
    return SimpleNamespace(val_cases=Cases(frame), variants=variants), labels


def test_best_is_chosen_on_validation_even_when_the_test_split_says_otherwise():
    labels = np.repeat(np.arange(NUM_CLASSES), 10)
    good, bad = labels.copy(), labels.copy()
    bad[::2] = 0  # half wrong
    # TTA better on validation, worse on test: validation decides.
    ev, _ = _evaluation({"cnn": bad, "tta": good}, {"cnn": good, "tta": bad})
    which, figures = best_on_validation(ev)
    assert which == "tta" and figures["tta"] == 1.0 and figures["cnn"] < 0.6
    ev, _ = _evaluation({"cnn": good, "tta": bad}, {"cnn": bad, "tta": good})
    assert best_on_validation(ev)[0] == "cnn"


def test_a_tie_keeps_the_simpler_variant():
    labels = np.repeat(np.arange(NUM_CLASSES), 10)
    ev, _ = _evaluation({"cnn": labels, "tta": labels, "ensemble": labels}, {})
    assert best_on_validation(ev)[0] == "cnn"
    # Rows that are not exportable (baselines, rules) are never chosen.
    ev.variants["rules"] = Variant("rules", "rules", _onehot(labels), _onehot(labels))
    assert set(best_on_validation(ev)[1]) == {"cnn", "tta", "ensemble"}


def test_best_needs_something_to_choose_from():
    with pytest.raises(ConfigError, match="--export best chooses among variants"):
        config_from_args(_parse(["--model", "x.ckpt", "--export", "best"]))
    config = config_from_args(_parse(["--model", "x.ckpt", "--tta", "--export", "best"]))
    assert config.tta
