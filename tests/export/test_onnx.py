"""``model.onnx`` beside ``model.pt`` in every exported version: the same inputs and named
outputs, equal to eager PyTorch through ONNX Runtime on real photos, recorded in
metadata.json, refused when it disagrees; and its config for Triton's ONNX Runtime backend."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from contracts.errors import ConfigError
from contracts.labels import CLASSES, NUM_CLASSES
from contracts.metadata import MetadataError, check_artifacts, read_metadata
from contracts.tensors import (
    CAM_OUTPUT_NAME,
    DEFAULT_MODEL_NAME,
    INPUT_NAME,
    OOD_OUTPUT_NAME,
    OUTPUT_NAME,
)
from contracts.triton_config import (
    ONNX_FILE,
    ONNX_PLATFORM,
    TORCHSCRIPT_FILE,
    onnxruntime_config,
    production_config,
)
from models import create_classifier
from tests.export.conftest import SIZE
from training.__main__ import main as training_main
from training.ensemble import Ensemble
from training.export import (
    ONNX_TOLERANCE,
    SCORE_TOLERANCE,
    ExportOptions,
    GatedModel,
    LogProbabilities,
    OnnxRuntimeModel,
    ProbabilityModel,
    check_onnx,
    export,
    export_model,
    fit_gaussians,
    load_checkpoint,
    parity_batch,
    parity_outputs,
    split_classifier,
    to_onnx,
)
from training.export.cam import CAM_TOLERANCE
from training.export.onnx import main as onnx_main
from training.export.onnx import write_onnxruntime_config
from training.export.ood import Neighbours, colour_histogram
from training.tta import TTA

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos(real_lesions_dir: Path) -> np.ndarray:
    """All 28 real lesion photos at the checkpoints' size."""
    return parity_batch(real_lesions_dir, SIZE, n=28)


@pytest.fixture(scope="module")
def version(checkpoint: Path, real_lesions_dir: Path, tmp_path_factory) -> Path:
    """``checkpoint`` exported as version 1 of a repository of its own, as ``make run`` does."""
    repo = tmp_path_factory.mktemp("onnx-repo")
    return export(checkpoint, repo, options=ExportOptions(parity_images=real_lesions_dir))


def _onnx(folder: Path, images: np.ndarray) -> list[np.ndarray]:
    sess = check_onnx(folder / ONNX_FILE, SIZE, read_metadata(folder).output_names())
    return sess.run(None, {INPUT_NAME: images})


def test_every_export_writes_model_onnx_equal_to_the_eager_model(version, checkpoint, photos):
    meta = json.loads((version / "metadata.json").read_text())
    assert sorted(p.name for p in version.iterdir()) == ["metadata.json", "model.onnx", "model.pt"]
    assert meta["artifacts"] == {"torchscript": "model.pt", "onnx": "model.onnx"}
    assert meta["onnx"]["exporter"] == "torchscript" and meta["onnx"]["opset"] == 17
    assert 0 <= meta["parity"]["onnx"]["max_abs_diff"] <= ONNX_TOLERANCE == 1e-4

    eager = ProbabilityModel(load_checkpoint(checkpoint).classifier).eval()
    with torch.no_grad():
        expected = eager(torch.from_numpy(photos)).numpy()
    assert 0 <= meta["parity"]["onnx"]["cam_max_rel_diff"] <= CAM_TOLERANCE == 1e-4
    # The 28 real photos as one batch, one at a time, and the largest batch Triton sends.
    whole, cam = _onnx(version, photos)
    single = np.concatenate([_onnx(version, photos[i : i + 1])[0] for i in range(len(photos))])
    assert whole.shape == (28, NUM_CLASSES) and whole.dtype == np.float32
    assert cam.shape == (28, NUM_CLASSES, *meta["explain"]["grid"]) and cam.dtype == np.float32
    assert np.abs(whole - expected).max() <= ONNX_TOLERANCE
    assert np.abs(single - expected).max() <= ONNX_TOLERANCE
    largest, _ = _onnx(version, np.resize(photos, (32, *photos.shape[1:])))
    assert largest.shape == (32, NUM_CLASSES)
    assert np.allclose(largest.sum(axis=1), 1.0, atol=1e-5)


def test_the_onnx_file_takes_and_gives_what_metadata_and_config_say(version):
    grid = read_metadata(version).cam_grid()
    sess = check_onnx(version / ONNX_FILE, SIZE, [OUTPUT_NAME, CAM_OUTPUT_NAME], grid)
    (image,) = sess.get_inputs()
    probabilities, cam = sess.get_outputs()  # no placeholder at index 1: ONNX binds by name
    assert (image.name, image.type) == (INPUT_NAME, "tensor(uint8)")
    assert not isinstance(image.shape[0], int) and image.shape[1:] == [*SIZE, 3]  # any batch
    assert (probabilities.name, probabilities.type) == (OUTPUT_NAME, "tensor(float)")
    assert (cam.name, cam.type, cam.shape[1:]) == (
        CAM_OUTPUT_NAME,
        "tensor(float)",
        [NUM_CLASSES, *grid],
    )
    with pytest.raises(ConfigError, match=r"outputs .*cam__2"):
        check_onnx(version / ONNX_FILE, SIZE, [OUTPUT_NAME, CAM_OUTPUT_NAME], (grid[0] + 1, 1))
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["inputs"][0]["shape"] == [-1, *SIZE, 3]
    with pytest.raises(ConfigError, match=re.escape(f"{version / ONNX_FILE} does not take")):
        check_onnx(version / ONNX_FILE, (112, 150), [OUTPUT_NAME])
    with pytest.raises(ConfigError, match=r"outputs .*ood_score__1"):
        check_onnx(version / ONNX_FILE, SIZE, [OUTPUT_NAME, OOD_OUTPUT_NAME, CAM_OUTPUT_NAME])


def test_a_gated_version_has_both_outputs_in_onnx(gated_version, real_lesions_dir):
    folder, _ = gated_version
    meta = read_metadata(folder)
    assert meta.artifact_files() == {"torchscript": TORCHSCRIPT_FILE, "onnx": ONNX_FILE}
    assert meta.parity["onnx"]["ood_max_rel_diff"] <= SCORE_TOLERANCE
    images = parity_batch(real_lesions_dir, SIZE, n=28)
    probs, score, cam = _onnx(folder, images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(folder / "model.pt"))
    with torch.no_grad():
        ts_probs, ts_score, ts_cam = (t.numpy() for t in scripted(torch.from_numpy(images)))
    assert score.shape == (28, 1) and np.abs(probs - ts_probs).max() <= ONNX_TOLERANCE
    assert (np.abs(score - ts_score) / np.maximum(np.abs(ts_score), 1.0)).max() <= SCORE_TOLERANCE
    assert cam.shape == ts_cam.shape == (28, NUM_CLASSES, *meta.cam_grid())
    assert np.abs(cam - ts_cam).max() <= CAM_TOLERANCE * max(1.0, np.abs(ts_cam).max())


@pytest.mark.parametrize("kind", ["mahalanobis", "energy", "msp"])
def test_every_ood_score_converts(kind, checkpoint, photos):
    """knn is the gated version's (above); the other scores through the same conversion."""
    torch.set_grad_enabled(False)
    try:
        classifier = load_checkpoint(checkpoint).classifier
        detector = split_classifier(classifier)
        x = torch.from_numpy(photos)
        features = detector(x)[1].double().numpy()
        gaussians = fit_gaussians(features, np.arange(len(photos)) % NUM_CLASSES)
        neighbours = Neighbours(features, colour_histogram(x).double().numpy())
        gated = GatedModel(detector, kind, 1.3, gaussians, None, neighbours).eval()
        data, _ = to_onnx(gated, x[:2], [OUTPUT_NAME, OOD_OUTPUT_NAME])
        runtime = OnnxRuntimeModel(check_onnx(data, SIZE, [OUTPUT_NAME, OOD_OUTPUT_NAME]))
        diff, score_diff = parity_outputs(gated, runtime, photos)
    finally:
        torch.set_grad_enabled(True)
    assert diff <= ONNX_TOLERANCE and score_diff is not None and score_diff <= SCORE_TOLERANCE


def test_tta_and_ensemble_versions_have_onnx_too(checkpoint, photos, tmp_path):
    """The evaluation's variants, as ``training.export.variants`` hands them to the writer."""
    classifier = load_checkpoint(checkpoint).classifier
    tta = TTA(ProbabilityModel(classifier, 1.5), input_size=SIZE)
    other = create_classifier("compact_cnn").eval()
    ensemble = Ensemble([ProbabilityModel(classifier), ProbabilityModel(other, 2.0)])
    for module in (LogProbabilities(tta), LogProbabilities(ensemble)):
        folder = export_model(module.eval(), tmp_path, SIZE, photos[:8])
        (probs,) = _onnx(folder, photos)
        with torch.no_grad():
            expected = module(torch.from_numpy(photos)).softmax(dim=1).numpy()
        assert np.abs(probs - expected).max() <= ONNX_TOLERANCE
        assert read_metadata(folder).parity["onnx"]["max_abs_diff"] <= ONNX_TOLERANCE


def test_the_torch_export_based_exporter_gives_the_same_model(checkpoint, photos):
    """The fallback when the TorchScript-based exporter fails (or leaves a later torch)."""
    model = ProbabilityModel(load_checkpoint(checkpoint).classifier).eval()
    data, exporter = to_onnx(model, torch.from_numpy(photos[:2]), [OUTPUT_NAME], ("dynamo",))
    assert exporter == "dynamo"
    runtime = OnnxRuntimeModel(check_onnx(data, SIZE, [OUTPUT_NAME]))
    diff, _ = parity_outputs(model, runtime, photos)
    assert diff <= ONNX_TOLERANCE
    with pytest.raises(ConfigError, match=r"cannot be exported to ONNX \(tensorrt: .*--no-onnx"):
        to_onnx(model, torch.from_numpy(photos[:2]), [OUTPUT_NAME], ("tensorrt",))


class DriftsWhenTraced(nn.Module):
    """A classifier with a branch only a trace takes (as ``Preprocess`` skips its input check
    there): TorchScript scripts it and agrees, the ONNX export traces it and does not."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if torch.jit.is_tracing():
            logits = logits + torch.arange(logits.shape[1], dtype=logits.dtype)
        return logits


class IgnoresItsInput(nn.Module):
    """Logits that do not depend on the image: the ONNX exporter drops the unused input."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(1, len(CLASSES)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(2, len(CLASSES))


def test_an_onnx_file_that_disagrees_is_refused_at_export(photos, tmp_path):
    drifting = DriftsWhenTraced(create_classifier("compact_cnn")).eval()
    with pytest.raises(
        ConfigError,
        match=r"model\.onnx run by ONNX Runtime and the eager model differ in the probabilities "
        r"by .* \(max abs, > 0\.0001\) on 8 real images: nothing was written",
    ):
        export_model(drifting, tmp_path, SIZE, photos[:8])
    with pytest.raises(
        ConfigError,
        match=r"model\.onnx does not take what the version does: it has inputs none, "
        r"metadata\.json's input_size says "
        r"\[\('image__0', 'tensor\(uint8\)', \[-1, 48, 64, 3\]\)\]",
    ):
        export_model(IgnoresItsInput().eval(), tmp_path, SIZE, photos[:2])
    assert list(tmp_path.iterdir()) == []  # no version, no model folder


def test_no_onnx_writes_model_pt_alone_and_says_so(checkpoint, real_lesions_dir, tmp_path, capsys):
    args = ["export", "--checkpoint", str(checkpoint), "--repository", str(tmp_path)]
    assert training_main([*args, "--parity-images", str(real_lesions_dir), "--no-onnx"]) == 0
    assert "no ONNX" in capsys.readouterr().out
    folder = tmp_path / DEFAULT_MODEL_NAME / "1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "MODEL_CARD.md",
        "metadata.json",
        "model.pt",
    ]
    meta = check_artifacts(folder)
    assert meta.artifacts == {"torchscript": "model.pt"} and meta.onnx is None
    assert "onnx" not in meta.parity
    with pytest.raises(ConfigError, match=r"version 1 of .* has no model\.onnx"):
        write_onnxruntime_config(folder.parent)


def test_a_version_missing_a_listed_artifact_is_refused(version, tmp_path):
    copy = tmp_path / "1"
    shutil.copytree(version, copy)
    assert check_artifacts(copy).artifact_files() == {
        "torchscript": "model.pt",
        "onnx": "model.onnx",
    }
    (copy / ONNX_FILE).unlink()
    with pytest.raises(MetadataError, match=re.escape(f"{copy / ONNX_FILE} is missing")):
        check_artifacts(copy)
    # A version exported before artifacts were recorded has model.pt alone, and still loads.
    raw = json.loads((copy / "metadata.json").read_text())
    for key in ("artifacts", "onnx"):
        del raw[key]
    (copy / "metadata.json").write_text(json.dumps(raw))
    assert check_artifacts(copy).artifact_files() == {"torchscript": "model.pt"}
    for wrong in (
        {"torchscript": "model.pt", "onnx": "other.onnx"},
        {"torchscript": "model.pt", "tensorrt": "../model.plan"},
        {"onnx": "model.onnx"},  # model.pt is always there
    ):
        raw["artifacts"] = wrong
        (copy / "metadata.json").write_text(json.dumps(raw))
        with pytest.raises(MetadataError, match="must name the model files of this code"):
            read_metadata(copy)
    # A kind a newer export adds is kept, and its file checked like the others.
    raw["artifacts"] = {"torchscript": "model.pt", "tensorrt": "model.plan"}
    (copy / "metadata.json").write_text(json.dumps(raw))
    assert read_metadata(copy).artifact_files()["tensorrt"] == "model.plan"
    with pytest.raises(MetadataError, match=re.escape(f"{copy / 'model.plan'} is missing")):
        check_artifacts(copy)


def test_onnxruntime_config_serves_model_onnx(version, capsys):
    model_dir = version.parent
    assert onnx_main(["config", str(model_dir)]) == 0
    path = model_dir / "configs" / "onnxruntime.pbtxt"
    assert f"wrote {path}" in capsys.readouterr().out
    cfg = text_format.Parse(path.read_text(), mc.ModelConfig())
    production = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
    assert (cfg.platform, cfg.backend, cfg.default_model_filename) == (
        ONNX_PLATFORM,
        "",
        ONNX_FILE,
    )
    assert ONNX_PLATFORM == "onnxruntime_onnx" and "INFERENCE_MODE" not in cfg.parameters
    assert cfg.name == production.name and cfg.output[0] == production.output[0]
    # The map's grid is pinned to the served version's as the input size is: model.onnx's.
    grid = read_metadata(version).cam_grid()
    assert [(t.name, list(t.dims)) for t in production.output[1:]] == [
        (CAM_OUTPUT_NAME, [NUM_CLASSES, -1, -1])
    ]
    assert [(t.name, list(t.dims)) for t in cfg.output[1:]] == [
        (CAM_OUTPUT_NAME, [NUM_CLASSES, *grid])
    ]
    assert cfg.version_policy == production.version_policy
    assert cfg.dynamic_batching == production.dynamic_batching
    assert cfg.instance_group == production.instance_group
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [
        (INPUT_NAME, mc.TYPE_UINT8, [*SIZE, 3])  # model.onnx's own size: that backend checks
    ]
    assert list(cfg.model_warmup[0].inputs[INPUT_NAME].dims) == [*SIZE, 3]
    # model.onnx takes what this config promises, at the largest batch, and gives its outputs.
    sess = check_onnx(version / ONNX_FILE, SIZE, [t.name for t in cfg.output])
    full = np.zeros((cfg.max_batch_size, *cfg.input[0].dims), np.uint8)
    (out,) = sess.run([cfg.output[0].name], {cfg.input[0].name: full})
    assert list(out.shape) == [cfg.max_batch_size, *cfg.output[0].dims]
    # The production config is untouched.
    assert production.backend == "pytorch" and list(production.input[0].dims) == [-1, -1, 3]


def test_onnxruntime_config_needs_a_positive_size_and_the_image_input():
    cfg = production_config("m", (64, 64), NUM_CLASSES, version=1)
    with pytest.raises(ValueError, match="not positive"):
        onnxruntime_config(cfg, (0, 64))
    cfg.input[0].name = "INPUT0"
    with pytest.raises(ValueError, match="no input named"):
        onnxruntime_config(cfg, (64, 64))
    assert onnx_main(["config", "/nonexistent/model"]) == 2
