"""LesionClassifier with real registry networks and the real LesionDataModule (synthetic set)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import lightning as L
import pytest
import torch

from contracts.errors import ConfigError
from contracts.labels import NUM_CLASSES
from training.datamodule import LesionDataModule
from training.module import LesionClassifier, warmup_cosine

SIZE = (48, 64)


@pytest.fixture(autouse=True)
def _restore_determinism() -> Iterator[None]:
    # Trainer(deterministic=...) switches torch's global flag; leave it as other tests found it.
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.fixture
def synthetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HAM10000_DIR: the data module falls back to its synthetic set."""
    monkeypatch.delenv("HAM10000_DIR", raising=False)


def _datamodule(**kw: object) -> LesionDataModule:
    kw = {"image_size": SIZE, "batch_size": 16, "num_workers": 0, "limit_per_class": 8, **kw}
    return LesionDataModule(**kw)


def _trainer(tmp_path: Path, **kw: object) -> L.Trainer:
    kw = {
        "max_epochs": 1,
        "limit_train_batches": 3,
        "limit_val_batches": 2,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        **kw,
    }
    return L.Trainer(accelerator="cpu", **kw)


class LrRecorder(L.Callback):
    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        self.seen.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_warmup_cosine_rises_linearly_then_decays_to_zero() -> None:
    factors = [warmup_cosine(s, warmup_steps=4, total_steps=20) for s in range(20)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in pairwise(factors[4:]))
    assert factors[-1] < 0.01
    assert warmup_cosine(0, warmup_steps=0, total_steps=10) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model_name": "no_such_net"}, "unknown model 'no_such_net'"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in"),
        ({"image_size": (8, 8)}, "image_size must be"),
        ({"dropout": 1.5}, "dropout must be in"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LesionClassifier(**kwargs)


def test_forward_maps_uint8_images_to_logits() -> None:
    model = LesionClassifier(image_size=SIZE).eval()
    images = torch.randint(0, 256, (2, *SIZE, 3), dtype=torch.uint8)
    logits = model(images)
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
    assert logits.dtype == torch.float32


@pytest.mark.usefixtures("synthetic")
def test_image_size_mismatch_with_the_data_is_a_config_error(tmp_path: Path) -> None:
    model = LesionClassifier(image_size=(64, 64))
    with pytest.raises(ConfigError, match=r"resizes images to \(48, 64\).*built for \(64, 64\)"):
        _trainer(tmp_path).fit(model, _datamodule())


@pytest.mark.slow
@pytest.mark.usefixtures("synthetic")
def test_fit_stores_data_facts_in_the_checkpoint_and_steps_the_schedule(tmp_path: Path) -> None:
    dm = _datamodule(limit_per_class=None)  # imbalanced classes: unequal weights
    model = LesionClassifier(image_size=SIZE, lr=0.01, warmup_epochs=1.0)
    lrs = LrRecorder()
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[lrs])
    trainer.fit(model, dm)

    # The data's class weights reached the loss's buffer.
    assert torch.equal(model.class_weights, dm.class_weights)
    assert model.class_weights.std() > 0
    # Per-iteration schedule: 3 warm-up steps (one epoch) to the peak, then cosine decay.
    assert trainer.global_step == 6
    assert lrs.seen == pytest.approx([0.01 * warmup_cosine(s, 3, 6) for s in range(6)])

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    raw = torch.load(path, map_location="cpu", weights_only=False)
    assert raw["dataset_version"] == dm.dataset_version
    assert raw["dataset_version"].startswith("synthetic-")
    assert raw["synthetic"] is True
    assert raw["class_weights"] == pytest.approx(dm.class_weights.tolist())
    assert raw["hyper_parameters"]["image_size"] == SIZE
    assert raw["wandb_run_id"] is None  # no W&B logger here

    loaded = LesionClassifier.load_from_checkpoint(path, map_location="cpu")
    assert loaded.dataset_version == dm.dataset_version and loaded.synthetic is True
    assert torch.equal(loaded.class_weights, dm.class_weights)
    images = torch.randint(0, 256, (3, *SIZE, 3), dtype=torch.uint8)
    torch.testing.assert_close(loaded.eval()(images), model.eval()(images))
    # Validation metrics were logged under stage/metric names.
    metrics = trainer.callback_metrics
    for key in ("val/balanced_accuracy", "val/sensitivity_mel", "val/auroc_macro", "val/loss"):
        assert key in metrics
    assert 0.0 <= float(metrics["val/balanced_accuracy"]) <= 1.0


@pytest.mark.slow
@pytest.mark.usefixtures("synthetic")
def test_same_seed_gives_the_same_weights(tmp_path: Path) -> None:
    def run() -> dict[str, torch.Tensor]:
        L.seed_everything(7, workers=True)
        model = LesionClassifier(image_size=SIZE)
        trainer = _trainer(tmp_path, limit_val_batches=0, deterministic=True)
        trainer.fit(model, _datamodule(seed=7))
        return {k: v.clone() for k, v in model.state_dict().items()}

    first, second = run(), run()
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0, msg=key)
    # And training did move the weights: the comparison is not between two fresh inits.
    L.seed_everything(7, workers=True)
    fresh = LesionClassifier(image_size=SIZE).state_dict()
    assert any(not torch.equal(fresh[k], first[k]) for k in first if k.endswith("weight"))


@pytest.mark.slow
@pytest.mark.usefixtures("synthetic")
def test_bf16_mixed_precision_runs_on_cpu(tmp_path: Path) -> None:
    model = LesionClassifier(image_size=SIZE)
    trainer = _trainer(tmp_path, precision="bf16-mixed")
    trainer.fit(model, _datamodule())
    loss = trainer.callback_metrics["train/loss_epoch"]
    assert math.isfinite(float(loss))
    assert math.isfinite(float(trainer.callback_metrics["val/loss"]))
    assert next(model.parameters()).dtype == torch.float32  # master weights stay fp32


@pytest.mark.slow
@pytest.mark.usefixtures("synthetic")
@pytest.mark.parametrize("warmup_epochs", [0.0, 1.0])
def test_max_steps_alone_sizes_the_warmup_from_the_loader(
    tmp_path: Path, warmup_epochs: float
) -> None:
    # Lightning leaves num_training_batches infinite when only max_steps is set; the warm-up
    # must still be a whole number of steps and the run must finish.
    recorder = LrRecorder()
    model = LesionClassifier(image_size=SIZE, warmup_epochs=warmup_epochs)
    trainer = _trainer(tmp_path, max_epochs=-1, max_steps=4, callbacks=[recorder])
    trainer.fit(model, datamodule=_datamodule())
    assert trainer.global_step == 4
    assert all(math.isfinite(lr) for lr in recorder.seen)


@pytest.mark.usefixtures("synthetic")
def test_frozen_stages_keep_their_weights_and_statistics_while_the_rest_trains(
    tmp_path: Path,
) -> None:
    model = LesionClassifier(
        "efficientnet_lite0", pretrained=True, image_size=SIZE, frozen_stages=2
    )
    net = model.model.net
    frozen = {
        k: v.clone()
        for k, v in net.state_dict().items()
        if k.startswith(("conv_stem", "bn1", "blocks.0."))
    }
    trained = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("blocks.1.")}
    assert frozen and trained
    _trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0).fit(
        model, _datamodule()
    )
    after = net.state_dict()
    # Weights AND running statistics of the stem and the first stage are as loaded ...
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert any("running_mean" in k for k in frozen)
    # ... while the next stage's weights and statistics moved.
    changed = [
        k for k, v in trained.items() if v.is_floating_point() and not torch.equal(after[k], v)
    ]
    assert any("running_mean" in k for k in changed) and any("weight" in k for k in changed)
    # The optimizer was given only what trains.
    assert not any(p.requires_grad for p in net.blocks[0].parameters())


def test_frozen_stages_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"frozen_stages must be in \[0, 7\].*got 9"):
        LesionClassifier("efficientnet_lite0", image_size=SIZE, frozen_stages=9)
    with pytest.raises(ConfigError, match=r"frozen_stages must be in \[0, 7\].*got -1"):
        LesionClassifier("efficientnet_lite0", image_size=SIZE, frozen_stages=-1)
