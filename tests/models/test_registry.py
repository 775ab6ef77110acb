"""Every registered network: built by name, uint8 NHWC in, [N, C] logits out, exportable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

import models
from contracts.errors import ConfigError
from contracts.images import eval_resize
from models.registry import create_classifier

# torch 2.14 deprecates TorchScript; export still relies on it (see shared notes).
JIT_DEPRECATED = "ignore:`torch.jit.*` is deprecated:FutureWarning"


def _photos(size: tuple[int, int], names: tuple[str, ...] = ("chelsea", "coffee")) -> torch.Tensor:
    """Real photos shipped by scikit-image as a uint8 NHWC batch, resized like the gateway."""
    return torch.from_numpy(np.stack([eval_resize(getattr(data, n)(), size) for n in names]))


def _calibrate(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Set BatchNorm statistics from ``x``, then eval mode.

    Untrained MobileNetV3 with unit BatchNorm statistics returns nearly the same logits for
    any input (differences of 1e-10), which would let a broken input path pass unnoticed.
    """
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics exactly
    with torch.no_grad():
        model.train()(x)
    return model.eval()


def test_expected_models_are_registered() -> None:
    names = models.list_models()
    for name in (
        "compact_cnn",
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "resnet18",
        "resnet50",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
    ):
        assert name in names


@pytest.mark.parametrize("name", models.list_models())
def test_spec_is_complete(name: str) -> None:
    spec = models.get_spec(name)
    assert spec.name == name
    height, width = spec.input_size
    assert height > 0 and width > 0
    assert len(spec.mean) == 3 and len(spec.std) == 3 and min(spec.std) > 0
    assert spec.description


@pytest.mark.filterwarnings(JIT_DEPRECATED)
@pytest.mark.parametrize("name", models.list_models())
def test_forward_and_torchscript(name: str) -> None:
    torch.manual_seed(0)
    x = _photos((64, 64))
    model = _calibrate(create_classifier(name, num_classes=7, dropout=0.3), x)
    with torch.no_grad():
        eager = model(x)
        assert eager.shape == (2, 7) and eager.dtype == torch.float32
        assert torch.isfinite(eager).all()
        # A cat and a coffee cup: a network that ignores its input fails here.
        assert (eager[0] - eager[1]).abs().max() > 1e-3
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), eager, atol=1e-5, rtol=0)
        # Neither batch size nor image size is baked into the export.
        other = _photos((48, 40), ("chelsea", "coffee", "astronaut"))
        torch.testing.assert_close(scripted(other), model(other), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", models.list_models())
def test_dropout_rate_reaches_the_head(name: str) -> None:
    net = models.create(name, num_classes=7, dropout=0.37)
    rates = [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    rates += [net.drop_rate] if hasattr(net, "drop_rate") else []
    assert 0.37 in rates


@pytest.mark.parametrize("name", models.list_models())
def test_dropout_is_active_in_training_only(name: str) -> None:
    torch.manual_seed(0)
    x = _photos((64, 64))
    model = _calibrate(create_classifier(name, num_classes=7, dropout=0.5), x)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    # Train mode changes BatchNorm too; freeze it so only dropout can differ.
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet7'.*compact_cnn"):
        models.create("resnet7")


@pytest.mark.parametrize(
    "name", [n for n in models.list_models() if not models.get_spec(n).pretrained]
)
def test_pretrained_without_shipped_weights_says_how_to_fix(name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} has no ImageNet weights.*weights_path"):
        models.create(name, pretrained=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, "num_classes must be at least 1"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
        ({"pretrained": True, "weights_path": "x.pth"}, "choose one"),
    ],
)
def test_impossible_arguments_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        models.create("efficientnet_lite0", **kwargs)
