"""The gate inside an exported version: the out-of-distribution score output, its threshold
and the quality thresholds, computed from the checkpoint's recorded split of real images."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from contracts.errors import ConfigError, DataError
from contracts.images import eval_resize, read_image
from contracts.labels import CLASS_INDEX, NUM_CLASSES
from contracts.metadata import read_metadata
from contracts.quality import QualityThresholds, check_content, check_geometry, measure
from contracts.repository import MODEL_CARD_FILE, promote, rollback, served_version
from contracts.tensors import CAM_OUTPUT_NAME, DEFAULT_MODEL_NAME, OOD_OUTPUT_NAME, OUTPUT_NAME
from models import create_classifier
from tests.export.conftest import GATE_IMAGES, SIZE
from training.__main__ import main as training_main
from training.export import (
    PARITY_TOLERANCE,
    SCORE_TOLERANCE,
    ExportOptions,
    FeatureClassifier,
    GatedModel,
    ProbabilityModel,
    choose_threshold,
    export,
    fit_gaussians,
    load_checkpoint,
    parity_batch,
    parity_outputs,
    split_classifier,
    to_torchscript,
)
from training.export.cam import CAM_TOLERANCE
from training.export.ood import KNN_K, Neighbours, check_split, colour_histogram
from training.recorded_split import datamodule_hparams, rebuild_split

pytestmark = pytest.mark.slow


def _load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))


def _outputs(folder: Path) -> list[tuple[str, int, list[int]]]:
    cfg = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    return [(t.name, t.data_type, list(t.dims)) for t in cfg.output]


CAM_OUTPUT = (CAM_OUTPUT_NAME, mc.TYPE_FP32, [NUM_CLASSES, -1, -1])
GATED_OUTPUTS = [
    (OUTPUT_NAME, mc.TYPE_FP32, [NUM_CLASSES]),
    (OOD_OUTPUT_NAME, mc.TYPE_FP32, [1]),
    CAM_OUTPUT,
]
PLAIN_OUTPUTS = [GATED_OUTPUTS[0], CAM_OUTPUT]  # --no-gate: probabilities__0 and cam__2
BARE_OUTPUTS = GATED_OUTPUTS[:1]  # --no-gate --no-cam


def _real_features(classifier: nn.Module, real_lesions_dir: Path, size: tuple[int, int]):
    table = pd.read_csv(real_lesions_dir / "labels.csv")
    images = torch.from_numpy(
        np.stack(
            [
                eval_resize(read_image(str(real_lesions_dir / f"{i}.jpg")), size)
                for i in table.image_id
            ]
        )
    )
    detector = split_classifier(classifier)
    _, features = check_split(detector, classifier, images)
    labels = np.array([CLASS_INDEX[d] for d in table.dx])
    return detector, fit_gaussians(features.double().numpy(), labels), images


@pytest.fixture(autouse=True)
def _grad_mode():
    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


@pytest.mark.parametrize("kind", ["knn", "mahalanobis", "energy", "msp"])
def test_gated_model_is_probability_model_plus_a_score_in_torchscript_too(
    kind, checkpoint, real_lesions_dir
):
    torch.set_grad_enabled(False)  # restored by the fixture below
    classifier = load_checkpoint(checkpoint).classifier
    detector, gaussians, images = _real_features(classifier, real_lesions_dir, SIZE)
    bank = images[::2]  # half the photos as the "training" bank, the other half new
    neighbours = Neighbours(
        detector(bank)[1].double().numpy(), colour_histogram(bank).double().numpy(), (0.5, 2.0), 3
    )
    gated = GatedModel(
        detector, kind, temperature=1.7, gaussians=gaussians, neighbours=neighbours
    ).eval()
    probs, score = gated(images)
    expected = ProbabilityModel(classifier, 1.7).eval()(images)
    # The served probabilities are the ungated model's, to the bit.
    assert torch.equal(probs, expected)
    assert score.shape == (len(images), 1) and score.dtype == torch.float32
    assert torch.isfinite(score).all() and score.std() > 0
    scripted, _ = to_torchscript(gated, images[:2])
    diff, score_diff = parity_outputs(gated, scripted, images.numpy())
    assert diff <= PARITY_TOLERANCE and score_diff is not None and score_diff <= SCORE_TOLERANCE
    if kind == "mahalanobis":  # the served score is the textbook distance to the nearest class
        textbook = gaussians.distances(detector(images)[1].double().numpy()).min(axis=1)
        np.testing.assert_allclose(score.numpy().ravel(), textbook, rtol=1e-4)
    if kind == "knn":  # the larger of the two scaled k-th-neighbour cosine distances
        d = neighbours.distances(
            detector(images)[1].double().numpy(), colour_histogram(images).double().numpy()
        )
        np.testing.assert_allclose(
            score.numpy().ravel(), np.maximum(d[:, 0] / 0.5, d[:, 1] / 2.0), atol=1e-5
        )
        # A photo in the bank is its own nearest neighbour, but the score reads the 3rd.
        assert (score[::2] > 1e-3).all()  # k=1 would give 0 for them
    if kind == "energy":
        logits = classifier(images).float() / 1.7
        np.testing.assert_allclose(score.numpy().ravel(), -1.7 * logits.logsumexp(1), rtol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_split_takes_the_head_of_torchvision_nets(name, real_lesions_dir):
    """ResNet's head is Sequential(Dropout, Linear); MobileNetV3's ends Linear, Hardswish,
    Dropout, Linear: the split must take the last Linear, and give the same logits."""
    classifier = create_classifier(name).eval()
    detector, gaussians, images = _real_features(classifier, real_lesions_dir, SIZE)
    assert isinstance(detector.head, nn.Linear) and detector.head.out_features == NUM_CLASSES
    gated = GatedModel(detector, "mahalanobis", gaussians=gaussians).eval()
    scripted, _ = to_torchscript(gated, images[:2])
    diff, score_diff = parity_outputs(gated, scripted, images.numpy()[:8])
    assert diff <= PARITY_TOLERANCE and score_diff is not None and score_diff <= SCORE_TOLERANCE


def test_colour_histogram_counts_the_pixels_of_each_colour_cell():
    """A known answer: a quarter of the pixels in each of four colour cells."""
    image = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    image[0, :2, :2] = torch.tensor([255, 0, 0])  # cell (3, 0, 0)
    image[0, :2, 2:] = torch.tensor([0, 255, 0])  # cell (0, 3, 0)
    image[0, 2:, :2] = torch.tensor([70, 70, 200])  # cell (1, 1, 3)
    hist = colour_histogram(image, bins=4)[0] ** 2
    expected = torch.zeros(64)
    for r, g, b in ((3, 0, 0), (0, 3, 0), (1, 1, 3), (0, 0, 0)):
        expected[(r * 4 + g) * 4 + b] = 0.25
    assert torch.allclose(hist, expected)


def test_knn_score_is_higher_for_images_unlike_the_bank():
    """A known answer: a bank of reddish images; a red image is near, a blue one far."""
    torch.set_grad_enabled(False)
    rng = np.random.default_rng(0)
    reds = rng.integers(0, 60, (40, 8, 8, 3)).astype(np.uint8)
    reds[..., 0] += 180
    blue = np.zeros((1, 8, 8, 3), np.uint8)
    blue[..., 2] = 220
    red = reds[:1].copy()
    detector = FeatureClassifier(nn.Flatten(), nn.Linear(192, NUM_CLASSES))
    bank = torch.from_numpy(reds[1:])
    neighbours = Neighbours(
        detector(bank.float())[1].numpy(), colour_histogram(bank).numpy(), (1.0, 1.0), 5
    )
    gated = GatedModel(detector, "knn", neighbours=neighbours).eval()
    near = float(gated(torch.from_numpy(red).float())[1])
    far = float(gated(torch.from_numpy(blue).float())[1])
    assert far > 2 * near


def test_a_model_without_a_linear_layer_cannot_be_split():
    with pytest.raises(ConfigError, match=r"no nn\.Linear"):
        split_classifier(nn.Sequential(nn.Conv2d(3, 7, 1), nn.Flatten()))
    with pytest.raises(ConfigError, match="unknown OOD score"):
        GatedModel(FeatureClassifier(nn.Identity(), nn.Linear(3, 7)), "entropy")


def test_mahalanobis_known_answer():
    """Three classes sharing one anisotropic covariance (standard deviations 2, 1, 0.5, 0.25
    along rotated axes): a step of 6 along the widest axis is 3 standard deviations (squared
    distance 9), the same step along the narrowest 24 (576). A score that ignored the
    covariance (Euclidean) would give both 36; one that used the wrong class would not be 9."""
    rng = np.random.default_rng(0)
    rotation = np.linalg.qr(rng.normal(size=(4, 4)))[0]
    stds = np.array([2.0, 1.0, 0.5, 0.25])
    means = np.array([[0.0, 0, 0, 0], [20, 0, 0, 0], [0, 20, 0, 0]])
    labels = np.repeat([0, 3, 6], 4000)  # classes 3 and 6 and 0 of seven; the others absent

    def draw(n_per_class: int) -> np.ndarray:
        z = rng.normal(size=(3 * n_per_class, 4)) * stds
        return np.repeat(means, n_per_class, axis=0) + z @ rotation.T

    gaussians = fit_gaussians(draw(4000), labels, shrinkage=0.0)
    assert gaussians.classes == (0, 3, 6)
    truth = rotation @ np.diag(1 / stds**2) @ rotation.T
    np.testing.assert_allclose(gaussians.precision, truth, rtol=0.1, atol=0.05)

    model = GatedModel(
        FeatureClassifier(nn.Identity(), nn.Linear(4, 7)), "mahalanobis", gaussians=gaussians
    )
    wide, narrow = means[1] + 6 * rotation[:, 0], means[1] + 6 * rotation[:, 3]
    with torch.no_grad():
        score = model(torch.tensor(np.stack([wide, narrow]), dtype=torch.float32))[1].numpy()
    np.testing.assert_allclose(score.ravel(), [9, 576], rtol=0.06)

    # Fresh in-distribution draws score below points far from every class mean.
    with torch.no_grad():
        held = model(torch.tensor(draw(500), dtype=torch.float32))[1].numpy().ravel()
        centre = means.mean(axis=0)  # Euclidean-close to all three, near none
        far = np.stack([centre, means[0] + 3 * rotation[:, 3], -means[1]])
        far_scores = model(torch.tensor(far, dtype=torch.float32))[1].numpy().ravel()
    assert np.quantile(held, 0.99) < 20 < far_scores.min()  # chi-square(4) 99 %: 13.3


def test_threshold_is_the_finite_sample_quantile():
    rng = np.random.default_rng(1)
    threshold, rate, k = choose_threshold(rng.permutation(np.arange(1.0, 200.0)), 0.01)
    assert (threshold, k) == (198.0, 198) and rate == pytest.approx(1 / 199)
    # Fewer than 99 images: no rank guarantees 1 %; the largest score, nothing refused.
    assert choose_threshold(np.arange(50.0), 0.01) == (49.0, 0.0, 50)
    # The guarantee itself: on fresh images, at most 1 % are over a threshold chosen on 199.
    calibration = rng.normal(size=(4000, 199))
    cuts = np.array([choose_threshold(row, 0.01)[0] for row in calibration])
    assert np.mean(rng.normal(size=4000) > cuts) <= 0.01
    with pytest.raises(DataError):
        choose_threshold(np.array([1.0, np.nan]), 0.01)
    with pytest.raises(DataError):
        choose_threshold(np.array([]), 0.01)


def test_metadata_and_config_of_a_gated_version(gated_version):
    folder, seconds = gated_version
    meta = read_metadata(folder)
    assert meta.has_ood_output
    assert meta.output_names() == [OUTPUT_NAME, OOD_OUTPUT_NAME, CAM_OUTPUT_NAME]
    quality, ood = meta.gate["quality"], meta.gate["ood"]
    assert isinstance(meta.quality_thresholds(), QualityThresholds)
    assert quality["percentiles"] == [0.0, 100.0] and quality["images"] == ood["fit_images"]
    assert ood["score"] == "knn" and ood["target_false_refusal"] == 0.01
    assert ood["k"] == KNN_K and min(ood["scales"].values()) > 0
    assert 400 < ood["fit_images"] <= GATE_IMAGES and ood["feature_dim"] == 192  # compact_cnn
    assert ood["validation_images"] >= 99 and 0 <= ood["validation_false_refusal"] <= 0.01
    assert meta.parity["ood_max_rel_diff"] <= SCORE_TOLERANCE == meta.parity["ood_tolerance"]
    written = json.loads((folder / "metadata.json").read_text())
    assert [o["name"] for o in written["outputs"]] == [
        OUTPUT_NAME,
        OOD_OUTPUT_NAME,
        CAM_OUTPUT_NAME,
    ]
    assert meta.parity["cam_max_rel_diff"] <= CAM_TOLERANCE == meta.parity["cam_tolerance"]
    assert _outputs(folder.parent) == GATED_OUTPUTS  # the first export is served: its outputs
    zeros = torch.zeros((3, *SIZE, 3), dtype=torch.uint8)
    probs, score, cam = _load(folder / "model.pt")(zeros)
    assert probs.shape == (3, NUM_CLASSES) and score.shape == (3, 1)
    assert cam.shape == (3, NUM_CLASSES, *meta.cam_grid()) == (3, NUM_CLASSES, 3, 4)
    print(f"gated export of a compact_cnn checkpoint: {seconds:.1f} s")


def test_threshold_refuses_at_most_one_percent_of_the_validation_images(
    gated_version, recorded_checkpoint
):
    """The whole gate as the gateway applies it (the quality checks, then the served model's
    score, TorchScript) on every validation image of the recorded split: at most 1 %."""
    folder, _ = gated_version
    meta = read_metadata(folder)
    ood, quality = meta.gate["ood"], meta.quality_thresholds()
    val = rebuild_split(datamodule_hparams(recorded_checkpoint), SIZE).splits["val"]
    originals = [read_image(p) for p in val["path"]]
    images = np.stack([eval_resize(img, SIZE) for img in originals])
    passed = np.array(
        [
            check_geometry(o.shape[1], o.shape[0], quality) is None
            and check_content(measure(x, o.shape[1], o.shape[0]), quality) is None
            for o, x in zip(originals, images, strict=True)
        ]
    )
    with torch.no_grad():
        scores = _load(folder / "model.pt")(torch.from_numpy(images))[1].numpy().ravel()
    n = len(scores)
    assert n == ood["validation_images"] and n >= 199
    slack = SCORE_TOLERANCE * max(1.0, abs(ood["threshold"]))  # eager vs TorchScript
    by_score = scores > ood["threshold"] + slack
    refused = np.mean(~passed | by_score)
    assert refused <= 0.01, (ood, np.mean(~passed))
    assert refused == pytest.approx(ood["validation_false_refusal"], abs=1 / n)
    assert np.mean(~passed) == pytest.approx(ood["validation_quality_refusal"])
    # The threshold is a served score: the rank-th smallest of the images the checks pass.
    assert np.sort(scores[passed])[ood["rank"] - 1] == pytest.approx(
        ood["threshold"], rel=SCORE_TOLERANCE
    )


def test_quality_thresholds_pass_the_training_photos(gated_version, recorded_checkpoint):
    folder, _ = gated_version
    thresholds = read_metadata(folder).quality_thresholds()
    assert thresholds is not None and thresholds.min_short_side == min(SIZE)
    split = rebuild_split(datamodule_hparams(recorded_checkpoint), SIZE).splits
    # The thresholds are the range of the fitted images (64 here): the training ones all pass,
    # and each one-sided check refuses about 1 in 65 new photos like them.
    for name, share in (("train", 0.9), ("val", 0.9)):  # train: not only the fitted 64
        passed = []
        for path in split[name]["path"][:200]:
            image = read_image(path)
            features = measure(eval_resize(image, SIZE), image.shape[1], image.shape[0])
            geometry = check_geometry(image.shape[1], image.shape[0], thresholds)
            passed.append(geometry is None and check_content(features, thresholds) is None)
        assert np.mean(passed) >= share, name
    # A black frame is refused by them.
    black = measure(np.zeros((*SIZE, 3), np.uint8), 600, 450)
    assert check_content(black, thresholds).code in ("uniform", "underexposed")


def test_config_outputs_follow_promote_and_rollback(
    gated_version, recorded_checkpoint, real_lesions_dir, tmp_path
):
    """A --no-gate version beside a gated one: the config lists the served version's outputs."""
    repo = tmp_path / "repo"
    shutil.copytree(gated_version[0].parent, repo / DEFAULT_MODEL_NAME)
    model_dir = repo / DEFAULT_MODEL_NAME
    args = ["export", "--checkpoint", str(recorded_checkpoint), "--repository", str(repo)]
    extra = ["--parity-images", str(real_lesions_dir), "--reference-images", "8"]
    assert training_main([*args, *extra, "--no-gate"]) == 0
    plain = read_metadata(model_dir / "2")
    assert plain.gate is None and not plain.has_ood_output
    # Its card: what metadata.json knows, and that it was not evaluated (how to get one).
    card = (model_dir / "2" / MODEL_CARD_FILE).read_text()
    assert card.startswith(f"# Model card: {DEFAULT_MODEL_NAME} version 2")
    assert "Not evaluated on the held-out split" in card and "not a medical device" in card
    for key, point in plain.thresholds.items():
        assert f"| {key} | {point['threshold']:.4f} |" in card
    assert training_main([*args, *extra, "--no-gate", "--no-cam"]) == 0
    assert not read_metadata(model_dir / "3").has_cam_output
    zeros = torch.zeros((1, *SIZE, 3), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        # The map stays the third output (cam__2) without the score: an empty placeholder second.
        out = torch.jit.load(str(model_dir / "2" / "model.pt"))(zeros)
        assert [tuple(t.shape) for t in out] == [(1, NUM_CLASSES), (1, 0), (1, NUM_CLASSES, 3, 4)]
        bare = torch.jit.load(str(model_dir / "3" / "model.pt"))(zeros)
        assert bare.shape == (1, NUM_CLASSES)
    assert served_version(model_dir) == 1 and _outputs(model_dir) == GATED_OUTPUTS

    promote(model_dir, 2)
    assert _outputs(model_dir) == PLAIN_OUTPUTS
    promote(model_dir, 3)
    assert _outputs(model_dir) == BARE_OUTPUTS
    rollback(model_dir)
    assert served_version(model_dir) == 2 and _outputs(model_dir) == PLAIN_OUTPUTS
    rollback(model_dir)
    assert served_version(model_dir) == 1 and _outputs(model_dir) == GATED_OUTPUTS
    promote(model_dir, 2)
    cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
    assert cfg.output[0].label_filename == "labels.txt"  # kept through the edits


def test_without_data_export_warns_and_writes_no_gate(checkpoint, real_lesions_dir, tmp_path):
    with pytest.warns(UserWarning, match=r"gate: null.*records no data module"):
        version = export(
            checkpoint, tmp_path, options=ExportOptions(parity_images=real_lesions_dir)
        )
    meta = read_metadata(version)
    assert meta.gate is None and _outputs(version.parent) == PLAIN_OUTPUTS
    assert "ood_max_rel_diff" not in meta.parity


def test_bad_gate_options_are_clear_errors(recorded_checkpoint, real_lesions_dir, tmp_path, capsys):
    with pytest.raises(ConfigError, match="--ood-score 'entropy' is unknown"):
        export(recorded_checkpoint, tmp_path, options=ExportOptions(ood_score="entropy"))
    args = ["export", "--checkpoint", str(recorded_checkpoint), "--repository", str(tmp_path)]
    assert training_main([*args, "--gate-images", "0"]) == 2
    assert "--gate-images must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / DEFAULT_MODEL_NAME).exists()


def test_writer_refuses_a_gate_without_its_model(checkpoint, real_lesions_dir, tmp_path):
    from contracts.metadata import VersionMetadata
    from training.export import export_model

    meta = VersionMetadata(DEFAULT_MODEL_NAME, SIZE, gate={"ood": {"threshold": 1.0}})
    with pytest.raises(ConfigError, match="gated model"):
        export_model(
            load_checkpoint(checkpoint).classifier,
            tmp_path,
            SIZE,
            parity_batch(real_lesions_dir, SIZE, n=2),
            meta,
        )
    assert not (tmp_path / DEFAULT_MODEL_NAME).exists()
