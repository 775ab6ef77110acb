"""A fusion checkpoint (image + age, sex, body site) exported end to end: ``model.pt`` and
``model.onnx`` take ``(image__0, clinical__1)`` and equal eager PyTorch on the 28 real photos
with their own metadata rows, config.pbtxt and metadata.json declare both inputs and the
encoding, the gate's score reads the image alone, the map still averages to the logit, and a
version of another encoding is refused where it would be served."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from contracts import clinical
from contracts.errors import ConfigError
from contracts.images import eval_resize, read_image
from contracts.labels import CLASS_INDEX
from contracts.metadata import read_metadata
from contracts.tensors import CLINICAL_INPUT_NAME, INPUT_NAME
from contracts.triton_config import CONFIG_FILE, ConfigFileError
from models import create_classifier
from serving.triton.render import render_repository
from tests.export.conftest import SIZE
from tests.factories import ham_layout, smoke_checkpoint
from training.evaluation.sources import load_source
from training.export import (
    ExportOptions,
    OnnxRuntimeModel,
    ProbabilityModel,
    check_onnx,
    export,
    export_model,
    load_checkpoint,
    parity_batch,
    quiet_torchscript,
)
from training.export.cam import network_explainer
from training.export.torchscript import parity_clinical
from training.inference import predict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lesions(real_lesions_dir: Path) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """The 28 real photos at the model's size, their own metadata rows encoded, their table."""
    table = pd.read_csv(real_lesions_dir / "labels.csv")
    images = np.stack(
        [eval_resize(read_image(str(real_lesions_dir / f"{i}.jpg")), SIZE) for i in table.image_id]
    )
    rows = clinical.encode_batch(table.age, table.sex, table.localization)
    return images, rows, table


@pytest.fixture(scope="module")
def fusion_checkpoint(tmp_path_factory: pytest.TempPathFactory, lesions) -> Path:
    images, rows, table = lesions
    labels = [CLASS_INDEX[d] for d in table.dx]
    path = tmp_path_factory.mktemp("fusion-ckpt") / "fusion.ckpt"
    return smoke_checkpoint(path, images, labels, clinical=rows, dataset_version="fusion")


@pytest.fixture(scope="module")
def fusion_data(tmp_path_factory: pytest.TempPathFactory, ham_dir: Path) -> Path:
    """A small HAM10000-layout folder (real images and rows) for the split export rebuilds."""
    return ham_layout(tmp_path_factory.mktemp("fusion-data"), ham_dir, 20)


@pytest.fixture(scope="module")
def fusion_version(
    fusion_checkpoint: Path,
    fusion_data: Path,
    real_lesions_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The fusion checkpoint exported as ``python -m training export`` does: gate (knn), map,
    ONNX, thresholds, on a real split."""
    options = ExportOptions(
        parity_images=real_lesions_dir,
        reference_data=fusion_data,
        reference_images=16,
        gate_images=64,
    )
    return export(fusion_checkpoint, tmp_path_factory.mktemp("fusion-repo"), options=options)


def test_the_parity_rows_are_the_photos_own(real_lesions_dir, lesions):
    _images, rows, table = lesions
    batch = parity_batch(real_lesions_dir, SIZE)
    found = parity_clinical(real_lesions_dir, len(batch))
    by_id = dict(zip(table.image_id, rows, strict=True))
    first = sorted(p.stem for p in real_lesions_dir.glob("*.jpg"))[: len(batch)]
    np.testing.assert_array_equal(found, np.stack([by_id[i] for i in first]))
    assert found[:, 1].all() and found.any(axis=1).all()  # real ages, real rows


def test_metadata_config_and_files_declare_both_inputs(fusion_version):
    meta = read_metadata(fusion_version)
    assert meta.clinical == clinical.describe()
    assert meta.input_names() == [INPUT_NAME, CLINICAL_INPUT_NAME]
    raw = json.loads((fusion_version / "metadata.json").read_text())
    assert raw["inputs"][1] == {
        "name": CLINICAL_INPUT_NAME,
        "datatype": "FP32",
        "shape": [-1, clinical.DIM],
    }
    assert raw["training_config"]["clinical"] is True
    # The gate and the map made it: the fusion does not cost the version its other outputs.
    assert meta.has_ood_output and meta.has_cam_output
    assert meta.parity["max_abs_diff"] <= 1e-5 and meta.parity["onnx"]["max_abs_diff"] <= 1e-4
    cfg = text_format.Parse((fusion_version.parent / CONFIG_FILE).read_text(), mc.ModelConfig())
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [
        (INPUT_NAME, mc.TYPE_UINT8, [-1, -1, 3]),
        (CLINICAL_INPUT_NAME, mc.TYPE_FP32, [clinical.DIM]),
    ]
    with quiet_torchscript():
        scripted = torch.jit.load(str(fusion_version / "model.pt"))
    args = scripted.forward.schema.arguments[1:]
    # Exactly the config's inputs, plain tensors: what Triton's PyTorch backend accepts.
    assert [(a.name, str(a.type)) for a in args] == [("image", "Tensor"), ("clinical", "Tensor")]
    check_onnx(fusion_version / "model.onnx", SIZE, meta.output_names(), meta.cam_grid(), 18)


def test_two_input_export_equals_eager_on_real_photos_with_their_rows(
    fusion_version, fusion_checkpoint, lesions
):
    images, rows, _ = lesions
    meta = read_metadata(fusion_version)
    loaded = load_checkpoint(fusion_checkpoint)
    eager = ProbabilityModel(loaded.classifier, meta.temperature).eval()
    x, c = torch.from_numpy(images), torch.from_numpy(rows)
    with torch.no_grad(), quiet_torchscript():
        scripted = torch.jit.load(str(fusion_version / "model.pt")).eval()
        probs, score, cam = scripted(x, c)
        expected = eager(x, c)
        # Other forms, same photos: other answers (the second input is used)...
        other = c.clone()
        other[:, 2:] = 0.0  # sex and site unknown
        other[:, 0] = 0.9
        probs_other, score_other, cam_other = scripted(x, other)
    assert float((probs - expected).abs().max()) <= 1e-5
    assert float((probs - probs_other).abs().max()) > 1e-4
    # ...the out-of-distribution score is the image's alone (knn on image features, colours)...
    torch.testing.assert_close(score, score_other)
    # ...and the map still averages to the logit: softmax(mean / T) is the served answer.
    torch.testing.assert_close(
        torch.softmax(cam.mean(dim=(2, 3)) / meta.temperature, dim=1), probs, atol=1e-5, rtol=0
    )
    assert float((cam - cam_other).abs().max()) > 1e-4
    runtime = OnnxRuntimeModel(
        check_onnx(
            fusion_version / "model.onnx", SIZE, meta.output_names(), meta.cam_grid(), clinical.DIM
        )
    )
    onnx_probs, onnx_score, _ = runtime(x, c)
    assert float((onnx_probs - expected).abs().max()) <= 1e-4
    torch.testing.assert_close(onnx_score, score, atol=1e-4, rtol=1e-4)
    onnx_other = runtime(x, other)[0]
    assert float((onnx_other - probs_other).abs().max()) <= 1e-4


def test_the_evaluation_reads_a_fusion_version_with_each_row_s_metadata(
    fusion_version, fusion_data
):
    source = load_source(fusion_version)
    frame = _frame(fusion_data).head(24)
    got = predict(source.logits, frame, SIZE, batch_size=10)
    images = np.stack([eval_resize(read_image(p), SIZE) for p in frame.path])
    rows = clinical.encode_batch(frame.age, frame.sex, frame.site)
    with torch.no_grad(), quiet_torchscript():
        scripted = torch.jit.load(str(fusion_version / "model.pt")).eval()
        expected = scripted(torch.from_numpy(images), torch.from_numpy(rows))[0]
    np.testing.assert_allclose(np.exp(got), expected.numpy(), atol=1e-5)


def _frame(folder: Path) -> pd.DataFrame:
    from training import data

    return data.validate(data.load_ham10000(folder), str(folder))


def test_a_version_of_another_encoding_is_refused_where_it_would_be_served(
    fusion_version, tmp_path
):
    repo = tmp_path / "repository"
    copy = repo / fusion_version.parent.name
    copy.mkdir(parents=True)
    for f in fusion_version.parent.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    version = copy / fusion_version.name
    version.mkdir()
    for f in fusion_version.iterdir():
        (version / f.name).write_bytes(f.read_bytes())
    render_repository(repo, tmp_path / "rendered")  # this code's encoding: served
    raw = json.loads((version / "metadata.json").read_text())
    raw["clinical"]["version"] = "clinical-v0"
    (version / "metadata.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigFileError, match=r"'clinical-v0'.*'clinical-v1'"):
        render_repository(repo, tmp_path / "rendered")
    with pytest.raises(ConfigError, match=r"'clinical-v0'.*'clinical-v1'"):
        load_source(version)
    read_metadata(version)  # still readable: listing and rollback go on


def test_export_refuses_a_fusion_model_without_the_photos_rows(real_lesions_dir, tmp_path):
    torch.manual_seed(0)
    model = create_classifier("compact_cnn", clinical=True).eval()
    images = parity_batch(real_lesions_dir, SIZE)
    with pytest.raises(ConfigError, match="parity images' own rows"):
        export_model(model, tmp_path, SIZE, images)
    assert not any(tmp_path.iterdir())


def test_an_image_only_export_keeps_its_single_input(real_lesions_dir, tmp_path):
    torch.manual_seed(0)
    model = create_classifier("compact_cnn").eval()
    images = parity_batch(real_lesions_dir, SIZE)
    # Rows given or not, an image-only network exports as it always did.
    version = export_model(
        model,
        tmp_path,
        SIZE,
        images,
        explainer=network_explainer(model),
        clinical=parity_clinical(real_lesions_dir, len(images)),
    )
    meta = read_metadata(version)
    assert meta.clinical is None and meta.input_names() == [INPUT_NAME]
    assert "clinical" not in json.loads((version / "metadata.json").read_text())
    cfg = text_format.Parse((version.parent / CONFIG_FILE).read_text(), mc.ModelConfig())
    assert [t.name for t in cfg.input] == [INPUT_NAME]
    assert CLINICAL_INPUT_NAME not in cfg.model_warmup[0].inputs
    with quiet_torchscript():
        scripted = torch.jit.load(str(version / "model.pt"))
    assert [a.name for a in scripted.forward.schema.arguments[1:]] == ["image"]
    assert meta.torchscript == "script"
    # Laid out as before the fusion models (tools/prod_runtime loads tensors by these names).
    assert any(k.startswith("explainer.source.network.net.") for k in scripted.state_dict())
