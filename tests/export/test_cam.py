"""The class activation map inside the exported model (``cam__2``): a known answer.

A ``compact_cnn`` is built by hand so that one feature fires on dark blobs and nothing else, and
class "mel" is driven by that feature alone ("nv" by the bright skin instead). On a skin-coloured
image with a dark blob in one corner, the map of "mel" must then peak in that corner's quadrant
and in no other, through every runtime a version is served with (``model.pt``, ``model.onnx``)
and every variant (the network, TTA, the gated model). The check can fail: the map of the wrong
class ("nv") and a map taken with the wrong class's weights, or TTA views mapped back wrongly,
do not pass it (the controls below).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from contracts.errors import ConfigError
from contracts.labels import CLASS_INDEX, NUM_CLASSES
from contracts.metadata import VersionMetadata, read_metadata
from contracts.tensors import CAM_OUTPUT_NAME, INPUT_NAME, OOD_OUTPUT_NAME, OUTPUT_NAME
from contracts.triton_config import CONFIG_FILE, ONNX_FILE, read_config
from models import create_classifier
from models.cam import CamClassifier, CamUnsupported
from models.compact import CompactCNN
from models.registry import IMAGENET_MEAN, IMAGENET_STD
from models.wrappers import ImageClassifier
from training.ensemble import Ensemble
from training.export import (
    GatedModel,
    LogProbabilities,
    ProbabilityModel,
    export_model,
    split_classifier,
)
from training.export.cam import (
    CamEnsemble,
    CamLogits,
    CamTTA,
    ExplainedProbabilityModel,
    unaugment_map,
)
from training.export.onnx import session
from training.tta import SHAPE_KEEPING, TTA, augment

SIZE = (64, 96)  # a 4 x 6 grid: compact_cnn's stride is 16
GRID = (4, 6)
MEL, NV = CLASS_INDEX["mel"], CLASS_INDEX["nv"]
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
SKIN, BLOB = (205, 150, 125), (55, 35, 30)


def blob_detector() -> ImageClassifier:
    """``compact_cnn`` whose feature 0 is ``0.5 - mean(RGB) / 255`` (fires on dark pixels) and
    feature 1 ``mean(RGB) / 255 - 0.5`` (bright skin), both passed through every block by the
    centre tap; "mel" reads feature 0, "nv" feature 1, every other weight and bias is zero."""
    classifier = create_classifier("compact_cnn", NUM_CLASSES, dropout=0.0)
    net = classifier.net
    assert isinstance(net, CompactCNN)
    mean = torch.tensor(IMAGENET_MEAN)
    std = torch.tensor(IMAGENET_STD)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)  # y = x + bias exactly
        first, bn = net.features[0], net.features[1]
        # On the normalised input x_c = (rgb_c / 255 - mean_c) / std_c: rgb_c / 255 = ...
        first.weight[0, :, 1, 1] = -std / 3  # ... so this is -mean(rgb / 255) + mean(mean_c)
        first.weight[1, :, 1, 1] = std / 3
        bn.bias[0] = 0.5 - float(mean.mean())
        bn.bias[1] = float(mean.mean()) - 0.5
        for conv in [m for m in net.features if isinstance(m, nn.Conv2d)][1:]:
            conv.weight[0, 0, 1, 1] = 1.0
            conv.weight[1, 1, 1, 1] = 1.0
        net.classifier.weight.zero_()
        net.classifier.bias.zero_()
        net.classifier.weight[MEL, 0] = 60.0
        net.classifier.weight[NV, 1] = 4.0
    return classifier.eval()


def blob_image(corner: str, seed: int = 0) -> np.ndarray:
    """A skin-coloured ``SIZE`` image (some noise) with a dark blob of radius 7 near ``corner``."""
    rng = np.random.default_rng(seed)
    image = np.asarray(SKIN, np.float32) + rng.normal(0, 6, (*SIZE, 3))
    cy = 11.0 if corner.startswith("top") else SIZE[0] - 12.0
    cx = 13.0 if corner.endswith("left") else SIZE[1] - 14.0
    yy, xx = np.mgrid[: SIZE[0], : SIZE[1]]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= 7**2
    image[mask] = np.asarray(BLOB, np.float32) + rng.normal(0, 4, (int(mask.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def images() -> np.ndarray:
    """One blob image per corner, in :data:`CORNERS` order."""
    return np.stack([blob_image(c, seed=i) for i, c in enumerate(CORNERS)])


def quadrant_maxima(cam: np.ndarray) -> dict[str, float]:
    """The largest value of a ``[h, w]`` map in each quadrant (even h and w)."""
    h, w = cam.shape
    return {
        "top-left": float(cam[: h // 2, : w // 2].max()),
        "top-right": float(cam[: h // 2, w // 2 :].max()),
        "bottom-left": float(cam[h // 2 :, : w // 2].max()),
        "bottom-right": float(cam[h // 2 :, w // 2 :].max()),
    }


def peaks_in(cam: np.ndarray, corner: str) -> bool:
    """The map has a clear peak in ``corner``'s quadrant: its largest cell is there, at least a
    quarter of the map's largest magnitude above the map's background (its median), and every
    other quadrant's largest is less than half as far above the background."""
    maxima = quadrant_maxima(cam)
    background = float(np.median(cam))
    peak = maxima[corner] - background
    others = [v - background for k, v in maxima.items() if k != corner]
    return (
        max(maxima, key=maxima.__getitem__) == corner
        and peak > 0.25 * float(np.abs(cam).max())
        and max(others) < peak / 2
    )


def check_known_answer(maps: np.ndarray) -> None:
    """``maps``: ``[4, 7, h, w]``, one image per corner: "mel" peaks in each blob's corner."""
    assert maps.shape == (len(CORNERS), NUM_CLASSES, *GRID)
    for i, corner in enumerate(CORNERS):
        assert peaks_in(maps[i, MEL], corner), (corner, quadrant_maxima(maps[i, MEL]))
        for other in CORNERS:
            if other != corner:
                assert not peaks_in(maps[i, MEL], other)


def _load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))


def _served_maps(version: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """The map of the version's ``model.pt`` and of its ``model.onnx``, by runtime."""
    with torch.no_grad():
        out = _load(version / "model.pt")(torch.from_numpy(x))
    sess = session(version / ONNX_FILE)
    (onnx_cam,) = sess.run([CAM_OUTPUT_NAME], {INPUT_NAME: x})
    return {"torchscript": out[2].numpy(), "onnx": onnx_cam}


@pytest.fixture(scope="module")
def detector() -> ImageClassifier:
    return blob_detector()


def test_the_hand_built_network_sees_the_blob(detector):
    x = torch.from_numpy(images())
    with torch.no_grad():
        logits, features, cam = CamClassifier(detector).eval()(x)
        probs = torch.softmax(detector(x), dim=1)
    assert features.shape == (4, 192) and (features[:, 2:] == 0).all()
    assert (probs.argmax(dim=1) == MEL).all()  # a blob: "mel" wins ...
    skin = torch.from_numpy(np.stack([np.full((*SIZE, 3), SKIN, np.uint8)]))
    with torch.no_grad():
        assert int(detector(skin).argmax()) == NV  # ... bare skin: "nv"
    torch.testing.assert_close(cam.mean(dim=(2, 3)), logits, atol=1e-5, rtol=0)


def test_an_exported_version_maps_the_blob_where_it_is(detector, tmp_path):
    x = images()
    explainer = CamLogits(CamClassifier(detector))
    version = export_model(
        detector,
        tmp_path,
        SIZE,
        x,
        VersionMetadata("skin_lesion", SIZE, temperature=2.0),
        explainer=explainer,
    )
    meta = read_metadata(version)
    assert meta.explain["grid"] == list(GRID) and meta.explain["variant"] == "cnn"
    assert meta.output_names() == [OUTPUT_NAME, CAM_OUTPUT_NAME]
    assert [o.name for o in read_config(version.parent / CONFIG_FILE).output] == [
        OUTPUT_NAME,
        CAM_OUTPUT_NAME,
    ]
    maps = _served_maps(version, x)
    for cam in maps.values():
        check_known_answer(cam)
    # Raw, in logits before the temperature: the map's grid mean is the logit, not logit / T.
    with torch.no_grad():
        logits = detector(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(maps["torchscript"].mean(axis=(2, 3)), logits, atol=1e-4)
    assert (
        meta.parity["cam_max_rel_diff"] <= 1e-4 and meta.parity["onnx"]["cam_max_rel_diff"] <= 1e-4
    )


class WrongWeights(CamLogits):
    """A broken explainer: each class's map taken with the weights of the class 1 after it
    ("mel" with "nv"'s)."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, cam = super().forward(image)
        return logits, cam.roll(-(NV - MEL), dims=1)


def test_the_check_fails_on_the_wrong_class_and_on_the_wrong_weights(detector, tmp_path):
    x = images()
    with torch.no_grad():
        _, cam = CamLogits(CamClassifier(detector)).eval()(torch.from_numpy(x))
        _, wrong = WrongWeights(CamClassifier(detector)).eval()(torch.from_numpy(x))
    cam = cam.numpy()
    # The map of another class ("nv": the skin) is not where the blob is.
    for i, corner in enumerate(CORNERS):
        assert not peaks_in(cam[i, NV], corner)
    with pytest.raises(AssertionError):
        check_known_answer(cam[:, [NV if c == MEL else c for c in range(NUM_CLASSES)]])
    # A map made with another class's weights fails the check, and export refuses it: its grid
    # mean is not the network's logit.
    with pytest.raises(AssertionError):
        check_known_answer(wrong.numpy())
    explainer = WrongWeights(CamClassifier(detector))
    with pytest.raises(ConfigError, match="mean over the grid differs from the logit"):
        export_model(detector, tmp_path, SIZE, x, explainer=explainer)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("op", ["identity", "hflip", "vflip", "rot180"])
def test_a_view_s_map_mapped_back_lies_on_the_original_grid(detector, op):
    x = torch.from_numpy(images())
    source = CamClassifier(detector).eval()
    with torch.no_grad():
        back = unaugment_map(source(augment(x, op))[2], op).numpy()
    check_known_answer(back)


def test_tta_averages_the_views_maps_mapped_back(detector, tmp_path):
    x = images()
    module = LogProbabilities(TTA(ProbabilityModel(detector, 1.5), SHAPE_KEEPING, SIZE))
    explainer = CamTTA(CamClassifier(detector), 1.5, SHAPE_KEEPING, SIZE)
    version = export_model(
        module, tmp_path, SIZE, x, VersionMetadata("skin_lesion", SIZE), explainer=explainer
    )
    meta = read_metadata(version)
    assert meta.explain["variant"] == "tta" and meta.explain["views"] == list(SHAPE_KEEPING)
    for cam in _served_maps(version, x).values():
        check_known_answer(cam)
    # Views mapped back wrongly (not at all) spread the blob over the mirrored corners.
    with torch.no_grad():
        views = [
            CamClassifier(detector).eval()(augment(torch.from_numpy(x), op))[2]
            for op in SHAPE_KEEPING
        ]
    with pytest.raises(AssertionError):
        check_known_answer((sum(views) / len(views)).numpy())


def test_a_gated_version_returns_probabilities_score_and_map(detector, tmp_path):
    x = images()
    gated = GatedModel(split_classifier(detector), "energy", 1.7).eval()
    meta = VersionMetadata("skin_lesion", SIZE, temperature=1.7)
    meta.gate = {"ood": {"score": "energy", "threshold": 0.0}}
    version = export_model(
        detector, tmp_path, SIZE, x, meta, gated=gated, explainer=CamLogits(CamClassifier(detector))
    )
    assert read_metadata(version).output_names() == [OUTPUT_NAME, OOD_OUTPUT_NAME, CAM_OUTPUT_NAME]
    with torch.no_grad():
        probs, score, cam = _load(version / "model.pt")(torch.from_numpy(x))
        want_probs, want_score = gated(torch.from_numpy(x))
    torch.testing.assert_close(probs, want_probs, atol=1e-6, rtol=0)
    torch.testing.assert_close(score, want_score, atol=1e-5, rtol=1e-5)
    check_known_answer(cam.numpy())
    sess = session(version / ONNX_FILE)
    assert [o.name for o in sess.get_outputs()] == [OUTPUT_NAME, OOD_OUTPUT_NAME, CAM_OUTPUT_NAME]
    check_known_answer(sess.run([CAM_OUTPUT_NAME], {INPUT_NAME: x})[0])


def test_a_gated_tta_version_keeps_the_gate_s_score_and_the_tta_map(detector, tmp_path):
    x = images()
    served = LogProbabilities(TTA(ProbabilityModel(detector, 1.5), SHAPE_KEEPING, SIZE))
    gated = GatedModel(split_classifier(detector), "msp", 1.0, classifier=served).eval()
    meta = VersionMetadata("skin_lesion", SIZE)
    meta.gate = {"ood": {"score": "msp", "threshold": -0.5}}
    explainer = CamTTA(CamClassifier(detector), 1.5, SHAPE_KEEPING, SIZE)
    version = export_model(served, tmp_path, SIZE, x, meta, gated=gated, explainer=explainer)
    with torch.no_grad():
        probs, score, cam = _load(version / "model.pt")(torch.from_numpy(x))
        want_probs, want_score = gated(torch.from_numpy(x))
    torch.testing.assert_close(probs, want_probs, atol=1e-6, rtol=0)
    torch.testing.assert_close(score, want_score, atol=1e-6, rtol=0)
    check_known_answer(cam.numpy())


def test_an_ensemble_averages_its_members_maps_when_their_grids_match(detector):
    x = torch.from_numpy(images())
    other = create_classifier("compact_cnn", NUM_CLASSES).eval()
    members = [CamClassifier(detector), CamClassifier(other)]
    explained = CamEnsemble(members, [1.0, 2.0], SIZE, weights=[3.0, 1.0]).eval()
    plain = LogProbabilities(
        Ensemble([ProbabilityModel(detector, 1.0), ProbabilityModel(other, 2.0)], [3.0, 1.0])
    ).eval()
    with torch.no_grad():
        logits, cam = explained(x)
        torch.testing.assert_close(logits, plain(x), atol=1e-6, rtol=0)
        maps = [m.eval()(x)[2] for m in members]
    torch.testing.assert_close(cam, 0.75 * maps[0] + 0.25 * maps[1])
    lite = create_classifier("efficientnet_lite0", NUM_CLASSES).eval()  # stride 32: 2 x 3
    with pytest.raises(CamUnsupported, match="different grids"):
        CamEnsemble([CamClassifier(detector), CamClassifier(lite)], [1.0, 1.0], SIZE)


def test_without_an_explainer_the_version_has_no_map_whatever_metadata_says(detector, tmp_path):
    meta = VersionMetadata("skin_lesion", SIZE, explain={"output": CAM_OUTPUT_NAME, "grid": [4, 6]})
    version = export_model(detector, tmp_path, SIZE, images(), meta, onnx=False)
    assert read_metadata(version).explain is None
    with torch.no_grad():
        out = _load(version / "model.pt")(torch.from_numpy(images()))
    assert isinstance(out, torch.Tensor) and out.shape == (4, NUM_CLASSES)


def test_the_placeholder_keeps_the_map_third_without_the_gate(detector):
    model = ExplainedProbabilityModel(CamLogits(CamClassifier(detector)), 2.0).eval()
    with torch.no_grad():
        probs, placeholder, cam = model(torch.from_numpy(images()))
    assert placeholder.shape == (4, 0) and cam.shape == (4, NUM_CLASSES, *GRID)
    torch.testing.assert_close(probs, torch.softmax(detector(torch.from_numpy(images())) / 2, 1))
