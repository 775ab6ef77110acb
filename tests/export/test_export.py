"""Export of a real LesionClassifier checkpoint into a versioned Triton model repository."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from contracts.errors import ConfigError
from contracts.images import RESIZE_POLICY
from contracts.labels import CLASSES
from contracts.repository import served_version
from contracts.tensors import (
    CAM_OUTPUT_NAME,
    DEFAULT_MODEL_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    output_index,
)
from models import create_classifier
from training.__main__ import main as training_main
from training.export import (
    PARITY_TOLERANCE,
    ExportOptions,
    export,
    export_model,
    parity_batch,
)
from training.module import LesionClassifier

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_scripted(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))


def test_export_writes_a_self_describing_version(checkpoint, real_lesions_dir, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        version = export(
            checkpoint, tmp_path, options=ExportOptions(parity_images=real_lesions_dir)
        )
    assert not [w for w in caught if "torch.jit" in str(w.message)], "TorchScript warnings leaked"
    assert version == tmp_path / DEFAULT_MODEL_NAME / "1"

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    meta = json.loads((version / "metadata.json").read_text())
    size = tuple(ckpt["hyper_parameters"]["image_size"])
    # The TorchScript file against Lightning's own way of loading the checkpoint.
    module = LesionClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    images = torch.from_numpy(parity_batch(real_lesions_dir, size, n=28))
    with torch.no_grad():
        eager = module(images).float().softmax(dim=1)
        # (probabilities, placeholder, class activation map): cam__2 is the third output.
        served, _, cam = _load_scripted(version / "model.pt")(images)
    assert served.dtype == torch.float32 and served.shape == (28, len(CLASSES))
    assert cam.shape == (28, len(CLASSES), *meta["explain"]["grid"])
    assert torch.allclose(served.sum(dim=1), torch.ones(28), atol=1e-5)
    assert (served - eager).abs().max() <= 1e-5

    assert meta["classes"] == list(CLASSES)
    assert tuple(meta["input_size"]) == size
    assert meta["resize_policy"] == RESIZE_POLICY
    assert meta["dataset_version"] == ckpt["dataset_version"] and meta["synthetic"] is False
    assert meta["training_config"]["model_name"] == ckpt["hyper_parameters"]["model_name"]
    best = next(s["best_model_score"] for k, s in ckpt["callbacks"].items() if "Checkpoint" in k)
    assert meta["metrics"]["val/balanced_accuracy"] == pytest.approx(float(best))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert meta["git"]["commit"] == head.stdout.strip() and isinstance(meta["git"]["dirty"], bool)
    created = datetime.fromisoformat(meta["created_at"])
    assert timedelta(0) <= datetime.now(UTC) - created < timedelta(minutes=5)
    assert 0 <= meta["parity"]["max_abs_diff"] <= PARITY_TOLERANCE and meta["parity"]["images"] == 8
    assert [meta["inputs"][0]["name"], meta["outputs"][0]["name"]] == [INPUT_NAME, OUTPUT_NAME]
    assert meta["version"] == 1 and meta["temperature"] == 1.0
    assert served_version(version.parent) == 1  # the first export is served at once


def test_config_pbtxt_matches_the_exported_model(checkpoint, real_lesions_dir, tmp_path):
    version = export(checkpoint, tmp_path, options=ExportOptions(parity_images=real_lesions_dir))
    model_dir = version.parent
    cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
    meta = json.loads((version / "metadata.json").read_text())
    height, width = meta["input_size"]

    assert cfg.name == model_dir.name == DEFAULT_MODEL_NAME
    assert cfg.backend == "pytorch"
    # Any height and width: versions of one model may differ in input size.
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [
        (INPUT_NAME, mc.TYPE_UINT8, [-1, -1, 3])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.output] == [
        (OUTPUT_NAME, mc.TYPE_FP32, [len(CLASSES)]),
        (CAM_OUTPUT_NAME, mc.TYPE_FP32, [len(CLASSES), -1, -1]),  # any grid: versions differ
    ]
    labels = model_dir / cfg.output[0].label_filename
    assert labels.read_text().splitlines() == list(CLASSES)
    assert cfg.max_batch_size >= 8
    assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 1)]
    assert list(cfg.version_policy.specific.versions) == [1]
    (warmup,) = cfg.model_warmup
    tensor = warmup.inputs[INPUT_NAME]
    assert (tensor.data_type, list(tensor.dims)) == (mc.TYPE_UINT8, [height, width, 3])
    # The model itself takes what the config promises, at the largest batch.
    full = torch.zeros((cfg.max_batch_size, *tensor.dims), dtype=torch.uint8)
    with torch.no_grad():
        out = _load_scripted(version / "model.pt")(full)
    # Each output the config lists is the returned tensor its name's __<index> says.
    for tensor in cfg.output:
        got = out[output_index(tensor.name)]
        assert got.dtype == torch.float32 and got.shape[0] == cfg.max_batch_size
        dims = list(tensor.dims)  # -1: any (the map's grid)
        assert len(dims) == got.dim() - 1
        assert all(d in (-1, n) for d, n in zip(dims, got.shape[1:], strict=True)), tensor.name
    with torch.no_grad():  # and at another size, as the config allows (another grid, too)
        other = _load_scripted(version / "model.pt")(torch.zeros((2, height + 16, width + 8, 3)))
    assert list(other[0].shape) == [2, len(CLASSES)]
    assert other[2].shape[:2] == (2, len(CLASSES)) and other[2].shape[2:] != out[2].shape[2:]


def test_exports_get_new_versions_and_never_overwrite(checkpoint, real_lesions_dir, tmp_path):
    first = export(checkpoint, tmp_path, options=ExportOptions(parity_images=real_lesions_dir))
    before = {p.name: _sha(p) for p in first.iterdir()}
    second = export(
        checkpoint, tmp_path, options=ExportOptions(parity_images=real_lesions_dir, temperature=2.0)
    )
    assert second.name == "2" and {p.name: _sha(p) for p in first.iterdir()} == before
    assert served_version(tmp_path / DEFAULT_MODEL_NAME) == 1  # a new export waits for promotion

    # Two exports at once, through the command line: distinct versions, nothing half-written.
    cmd = [sys.executable, "-m", "training", "export", "--checkpoint", str(checkpoint),
           "--repository", str(tmp_path), "--parity-images", str(real_lesions_dir)]  # fmt: skip
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    model_dir = tmp_path / DEFAULT_MODEL_NAME
    assert sorted(p.name for p in model_dir.iterdir() if p.is_dir()) == ["1", "2", "3", "4"]
    for v in (3, 4):
        assert json.loads((model_dir / str(v) / "metadata.json").read_text())["version"] == v
    assert {p.name: _sha(p) for p in first.iterdir()} == before


class DriftsWhenScripted(nn.Module):
    """Logits from mean colours, plus an offset only TorchScript sees: a broken export."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(x.float().mean(dim=(1, 2)) / 255.0)
        if torch.jit.is_scripting():
            logits = logits + torch.arange(logits.shape[1], dtype=logits.dtype) * 1e-3
        return logits


def test_parity_failure_writes_nothing(real_lesions_dir, tmp_path):
    images = parity_batch(real_lesions_dir, (48, 64))
    with pytest.raises(ConfigError, match=r"differ by .* nothing was written"):
        export_model(DriftsWhenScripted(), tmp_path, (48, 64), images)
    assert list(tmp_path.iterdir()) == []


def test_versions_of_one_model_may_differ_in_input_size(checkpoint, real_lesions_dir, tmp_path):
    first = export(checkpoint, tmp_path, options=ExportOptions(parity_images=real_lesions_dir))
    model_dir = first.parent
    config_before = (model_dir / "config.pbtxt").read_text()
    other = create_classifier("compact_cnn").eval()
    second = export_model(other, tmp_path, (40, 40), parity_batch(real_lesions_dir, (40, 40), n=2))
    assert second.name == "2"
    assert json.loads((second / "metadata.json").read_text())["input_size"] == [40, 40]
    assert (model_dir / "config.pbtxt").read_text() == config_before  # already any size

    # A repository exported before versions could differ: its fixed size is opened up.
    cfg = text_format.Parse(config_before, mc.ModelConfig())
    cfg.input[0].dims[:] = [*json.loads((first / "metadata.json").read_text())["input_size"], 3]
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    third = export_model(other, tmp_path, (44, 60), parity_batch(real_lesions_dir, (44, 60), n=2))
    upgraded = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
    assert third.name == "3" and list(upgraded.input[0].dims) == [-1, -1, 3]
    assert list(upgraded.version_policy.specific.versions) == [1]  # still serving the first


def _edited(checkpoint: Path, tmp_path: Path, edit) -> Path:
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, tmp_path / "edited.ckpt")
    return tmp_path / "edited.ckpt"


def _shrink_first_conv(ckpt: dict) -> None:
    key = next(k for k, v in ckpt["state_dict"].items() if v.ndim == 4 and v.shape[-1] > 1)
    ckpt["state_dict"][key] = ckpt["state_dict"][key][:, :, :1, :1].clone()


BAD_CHECKPOINTS = {
    "missing": (lambda c, t: t / "nope.ckpt", "does not exist"),
    "text": (lambda c, t: _write(t / "x.ckpt", b"hello"), "cannot be read as a PyTorch checkpoint"),
    "plain dict": (
        lambda c, t: _save(t / "x.ckpt", {"weights": torch.zeros(2)}),
        "not a Lightning checkpoint",
    ),
    "other network": (
        lambda c, t: _edited(c, t, lambda k: k["hyper_parameters"].update(model_name="resnet18")),
        "does not fit the network: .*missing keys",
    ),
    "misshapen": (lambda c, t: _edited(c, t, _shrink_first_conv), "misshapen tensors"),
    "unknown model": (
        lambda c, t: _edited(c, t, lambda k: k["hyper_parameters"].update(model_name="nonet")),
        "unknown model 'nonet'",
    ),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_bad_checkpoint_exits_2_with_a_clear_error(
    case, checkpoint, real_lesions_dir, tmp_path, capsys
):
    make, message = BAD_CHECKPOINTS[case]
    path = make(checkpoint, tmp_path)
    repo = tmp_path / "repo"
    args = ["export", "--checkpoint", str(path), "--repository", str(repo)]
    assert training_main([*args, "--parity-images", str(real_lesions_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err), err
    assert not (repo / DEFAULT_MODEL_NAME / "1").exists()


def test_unwritable_repository_and_missing_images_exit_2(checkpoint, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    args = ["export", "--checkpoint", str(checkpoint), "--repository", str(blocker / "repo")]
    assert training_main([*args, "--parity-images", str(tmp_path)]) == 2
    assert "cannot write to the model repository" in capsys.readouterr().err

    monkeypatch.delenv("REAL_LESIONS_DIR", raising=False)
    monkeypatch.delenv("HAM10000_DIR", raising=False)
    ok_repo = ["export", "--checkpoint", str(checkpoint), "--repository", str(tmp_path / "r")]
    assert training_main(ok_repo) == 2
    assert "no real images for the parity check" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert training_main([*ok_repo, "--parity-images", str(tmp_path / "empty")]) == 2
    assert "no JPEG/PNG images" in capsys.readouterr().err


def test_run_summary_supplies_wandb_run_and_figures(checkpoint, real_lesions_dir, tmp_path):
    """A checkpoint inside a run folder: export reads the summary.json that fit writes."""
    run = tmp_path / "runs" / "demo"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "best.ckpt"
    ckpt.write_bytes(checkpoint.read_bytes())
    summary = {  # the structure training.callbacks.RunSummary writes
        "val": {"epoch": 3, "metrics": {"balanced_accuracy": 0.123, "sensitivity_mel": 0.5}},
        "test": {"checkpoint": str(run / "checkpoints" / "other.ckpt"), "metrics": {"auroc": 0.9}},
        "best_checkpoint": str(ckpt),
        "wandb_run_dir": "wandb/offline-run-20261128_120000-abc123",
    }
    (run / "summary.json").write_text(json.dumps(summary))
    repo = tmp_path / "repo"
    meta = json.loads(
        (
            export(ckpt, repo, options=ExportOptions(parity_images=real_lesions_dir))
            / "metadata.json"
        ).read_text()
    )
    assert meta["wandb_run_id"] == "abc123"
    assert meta["metrics"]["val/sensitivity_mel"] == 0.5
    assert meta["metrics"]["val/balanced_accuracy"] != 0.123  # the checkpoint's own score wins
    assert "test/auroc" not in meta["metrics"]  # figures of another checkpoint
    flagged = export(
        ckpt, repo, options=ExportOptions(parity_images=real_lesions_dir, wandb_run_id="xyz")
    )
    assert json.loads((flagged / "metadata.json").read_text())["wandb_run_id"] == "xyz"
