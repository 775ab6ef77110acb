"""``training.export.precision``: the reduced-precision copy of a real exported version, and the
accuracy gate that refuses a broken one.

The version is a real gated export (``tests.factories.smoke_repository``: a LesionClassifier
checkpoint trained on real lesion photos, with the knn out-of-distribution score and the class
activation map); the gate's images are the 28 real full-size lesion photos with their labels.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from contracts.errors import ConfigError
from contracts.labels import CLASS_INDEX
from contracts.metadata import check_artifacts, read_metadata
from tests.cpu import cpu_bf16_units
from training.export.precision import (
    KEEP_FIRST,
    MAX_BA_DROP,
    MIN_AGREEMENT,
    Split,
    accuracy_check,
    add_precision,
    as_served,
    bf16_speed_warning,
    bf16_torchscript,
    bf16_units,
    build_variant,
    gate_failure,
    read_figures,
    read_images,
    torchscript_runner,
    variant_runner,
)

pytestmark = pytest.mark.slow
SIZE = (48, 64)  # smoke_repository's


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory, real_lesions_dir: Path) -> Path:
    from tests.factories import smoke_repository

    return smoke_repository(tmp_path_factory.mktemp("precision-repo"), real_lesions_dir)


@pytest.fixture(scope="module")
def split(real_lesions_dir: Path) -> Split:
    table = pd.read_csv(real_lesions_dir / "labels.csv")
    images = read_images([str(real_lesions_dir / f"{i}.jpg") for i in table.image_id], SIZE)
    labels = np.array([CLASS_INDEX[d] for d in table.dx])
    return Split(images, labels, calibration=images)


def _numbered(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".lock"))


CONVOLUTIONS = ("aten::_convolution", "mkldnn::_convolution_pointwise")


def _conv_weight_dtypes(model: torch.jit.ScriptModule) -> list[torch.dtype]:
    convs = [n for n in model.graph.nodes() if n.kind() in CONVOLUTIONS]
    return [n.inputsAt(1).toIValue().dtype for n in convs]


def test_the_fused_bf16_convolutions_compute_what_the_unfused_ones_do(version, split):
    fused = bf16_torchscript(version / "model.pt")
    plain = bf16_torchscript(version / "model.pt", fuse=False)
    kinds = [n.kind() for n in fused.graph.nodes()]
    bf16_convs = sum(d == torch.bfloat16 for d in _conv_weight_dtypes(plain))
    assert kinds.count("mkldnn::_convolution_pointwise") == bf16_convs > 0

    # the activations that alone read a bfloat16 convolution went into it
    def activations(kinds: list[str]) -> int:
        return sum(k.rstrip("_") in ("aten::hardtanh", "aten::relu") for k in kinds)

    assert activations(kinds) < activations([n.kind() for n in plain.graph.nodes()])
    a, b = torchscript_runner(fused)(split.val_images), torchscript_runner(plain)(split.val_images)
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    assert (a[0].argmax(1) == b[0].argmax(1)).all()
    if a[1] is not None:
        np.testing.assert_allclose(a[1], b[1], rtol=1e-5)
    # optimize_for_inference (how Triton loads it) takes the rewritten graph as it is, in memory
    served = torchscript_runner(as_served(bf16_torchscript(version / "model.pt")))
    np.testing.assert_allclose(served(split.val_images)[0], a[0], atol=1e-3)


def test_the_bf16_graph_runs_every_convolution_but_the_first_and_last_in_bf16(version):
    model = bf16_torchscript(version / "model.pt", keep_first=1)
    dtypes = _conv_weight_dtypes(model)
    assert len(dtypes) >= 3
    assert dtypes[0] == dtypes[-1] == torch.float32
    assert set(dtypes[1:-1]) == {torch.bfloat16}
    # The default keeps the first KEEP_FIRST in float32 (the measured choice).
    dtypes = _conv_weight_dtypes(bf16_torchscript(version / "model.pt"))
    assert dtypes[:KEEP_FIRST] == [torch.float32] * KEEP_FIRST and dtypes[-1] == torch.float32
    assert set(dtypes[KEEP_FIRST:-1]) == {torch.bfloat16}
    x = torch.zeros((2, *SIZE, 3), dtype=torch.uint8)
    with torch.inference_mode():
        out = model(x)
    assert [t.dtype for t in out] == [torch.float32] * len(out)  # the same output tensors


def test_a_good_bf16_copy_passes_the_gate_and_becomes_the_next_version(version, split):
    before = {p.name: p.read_bytes() for p in version.iterdir()}
    folder = add_precision(version, "bf16", split)
    assert folder == version.parent / "2"
    assert {p.name: p.read_bytes() for p in version.iterdir()} == before  # source untouched
    for name in ("model.pt", "model.onnx"):  # the fp32 reference files, unchanged
        assert (folder / name).read_bytes() == before[name]
    metadata = check_artifacts(folder)
    assert metadata.version == 2
    assert metadata.artifact_files() == {
        "torchscript": "model.pt",
        "onnx": "model.onnx",
        "torchscript_bf16": "model.bf16.pt",
    }
    figures = read_figures(folder, "bf16")
    assert figures["images"] == 28 and figures["source_version"] == 1
    assert figures["cpu_bf16_units"] == cpu_bf16_units()  # the gate's CPU, as the kernel says
    assert figures["agreement"] >= MIN_AGREEMENT
    assert figures["balanced_accuracy_drop"] <= MAX_BA_DROP
    # What was recorded is what the written file does on the same images.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        written = torchscript_runner(torch.jit.load(str(folder / "model.bf16.pt")))
        reference = torchscript_runner(torch.jit.load(str(version / "model.pt")))
    again = accuracy_check(reference, written, split.val_images, split.val_labels)
    assert again["agreement"] == figures["agreement"]
    assert again["max_abs_diff"] == pytest.approx(figures["max_abs_diff"], abs=1e-6)
    assert read_metadata(version).extra.get("precision") is None


def test_int8_calibrated_on_constant_images_is_refused_and_nothing_is_written(version, split):
    before = _numbered(version.parent)
    broken = Split(split.val_images, split.val_labels, np.full_like(split.val_images, 128))
    with pytest.raises(ConfigError, match=r"fails the accuracy check on 28 validation images"):
        add_precision(version, "int8", broken)
    assert _numbered(version.parent) == before  # no version, no temporary folder


def test_a_corrupted_scale_is_refused(version, split):
    import onnx
    from onnx import numpy_helper

    good = build_variant(version, "int8", split.calibration)
    model = onnx.load_from_string(good)
    initializers = {t.name: t for t in model.graph.initializer}
    weight_scales = {  # the scale of each DequantizeLinear that reads int8 weights
        n.input[1]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in initializers
        and initializers[n.input[0]].data_type == onnx.TensorProto.INT8
    }
    scales = [initializers[name] for name in sorted(weight_scales)]
    assert scales, "the quantised model has no weight scales"
    for t in scales[:3]:  # three layers' weights dequantised 20x too large
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 20, t.name))
    corrupted = model.SerializeToString()
    figures = accuracy_check(
        torchscript_runner(torch.jit.load(str(version / "model.pt"))),
        variant_runner("int8", corrupted),
        split.val_images,
        split.val_labels,
    )
    assert gate_failure(figures) is not None
    with pytest.raises(ConfigError, match="top-1 agreement with fp32"):
        add_precision(version, "int8", split, variant=corrupted)


def test_the_gate_thresholds():
    ok = {"images": 1000, "agreement": 0.99, "balanced_accuracy_drop": 0.005}
    assert (
        gate_failure(ok | {"balanced_accuracy": 0.6, "balanced_accuracy_reference": 0.605}) is None
    )
    low = ok | {"agreement": 0.989, "balanced_accuracy": 0.6, "balanced_accuracy_reference": 0.6}
    assert "11 of 1000 images change class" in (gate_failure(low) or "")
    drop = ok | {
        "balanced_accuracy_drop": 0.0051,
        "balanced_accuracy": 0.5949,
        "balanced_accuracy_reference": 0.6,
    }
    assert "drop 0.0051 > 0.005" in (gate_failure(drop) or "")
    nan = ok | {
        "agreement": float("nan"),
        "balanced_accuracy": 0.6,
        "balanced_accuracy_reference": 0.6,
    }
    assert gate_failure(nan) is not None


def test_an_unknown_precision_is_refused(version, split):
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        add_precision(version, "fp8", split)


def test_a_fusion_version_is_refused_with_nothing_written(tmp_path, real_lesions_dir, split):
    """Its accuracy check would run the image input alone: refused, saying why."""
    from models import create_classifier
    from training.export import export_model
    from training.export.torchscript import parity_batch, parity_clinical

    torch.manual_seed(0)
    model = create_classifier("compact_cnn", clinical=True).eval()
    images = parity_batch(real_lesions_dir, SIZE)
    fusion = export_model(
        model, tmp_path, SIZE, images, clinical=parity_clinical(real_lesions_dir, len(images))
    )
    before = _numbered(fusion.parent)
    with pytest.raises(ConfigError, match=r"fusion version .*clinical__1"):
        add_precision(fusion, "bf16", split)
    assert _numbered(fusion.parent) == before


def test_this_cpus_bf16_units_are_the_kernels_with_or_without_torchs_probes(monkeypatch):
    """torch's private probes and, where they are gone, /proc/cpuinfo: the same answer."""
    assert bf16_units() == cpu_bf16_units()
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert bf16_units() == cpu_bf16_units()


def test_a_cpu_without_bf16_units_is_told_to_serve_fp32():
    assert bf16_speed_warning(["AMX"]) is None
    assert bf16_speed_warning(["AVX-512 bf16"]) is None
    message = bf16_speed_warning([]) or ""
    assert "neither AMX nor AVX-512 bf16" in message
    assert "--runtime onnx or torchscript" in message
