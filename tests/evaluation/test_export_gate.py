"""``python -m training evaluate --export``: the exported variants carry the gate too, its
threshold chosen on the validation cases the evaluation chose the referral thresholds on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contracts.images import eval_resize, read_image
from contracts.metadata import read_metadata
from training.export import SCORE_TOLERANCE
from training.export.ood import DEFAULT_OOD_SCORE
from training.export.torchscript import quiet_torchscript

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(ev, repository) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{variant: (probabilities, scores)}`` of the exported model.pt files on the validation
    cases: cnn, tta and ensemble are versions 1, 2 and 3 of ``repository``."""
    size = ev.source.input_size
    images = torch.from_numpy(
        np.stack([eval_resize(read_image(p), size) for p in ev.val_cases.frame["path"]])
    )
    out = {}
    for which, version in (("cnn", 1), ("tta", 2), ("ensemble", 3)):
        with quiet_torchscript(), torch.no_grad():
            model = torch.jit.load(str(repository / str(version) / "model.pt")).eval()
            probs, score, _ = model(images)
        out[which] = probs.numpy(), score.numpy().ravel()
    return out


@pytest.mark.parametrize(("which", "version"), [("cnn", 1), ("tta", 2), ("ensemble", 3)])
def test_evaluate_export_writes_gated_versions(ev, repository, served, which, version):
    meta = read_metadata(repository / str(version))
    ood = meta.gate["ood"]
    assert meta.has_ood_output and ood["score"] == DEFAULT_OOD_SCORE == "knn"
    assert meta.quality_thresholds() is not None
    assert meta.parity["ood_max_rel_diff"] <= SCORE_TOLERANCE
    probs, scores = served[which]
    # The served probabilities are the variant's as evaluated; the threshold was chosen on
    # these very validation cases.
    np.testing.assert_allclose(probs, ev.variants[which].val, atol=2e-5)
    assert ood["validation_images"] == len(ev.val_cases) == len(scores)
    refused = np.mean(scores > ood["threshold"] + SCORE_TOLERANCE * max(1, abs(ood["threshold"])))
    assert refused == pytest.approx(ood["validation_score_refusal"], abs=1 / len(scores))
    assert ood["validation_false_refusal"] <= 0.01 or ood["validation_quality_refusal"] > 0.01
    # TTA and the ensemble keep their probabilities; the score is the checkpoint's network's.
    np.testing.assert_allclose(scores, served["cnn"][1], rtol=SCORE_TOLERANCE)
