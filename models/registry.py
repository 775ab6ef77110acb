"""A registry of networks, each with its default input size and normalisation (timm-style).

The spec is the one place that owns input size and normalisation: the exported model bakes
``mean``/``std`` in, and the data pipeline and gateway read ``input_size`` from it (or from the
training config that overrides it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What a registered network needs around it.

    Args:
        name: registry name.
        builder: ``builder(num_classes, dropout, pretrained, weights_path) -> nn.Module``;
            the module maps float ``[N, 3, H, W]`` normalised images to logits ``[N, C]``.
        input_size: default ``(height, width)``.
        mean: per-channel mean on the 0..1 scale.
        std: per-channel std on the 0..1 scale.
        description: one line for ``--help`` and docs.
    """

    name: str
    builder: Callable[..., nn.Module] = field(repr=False)
    input_size: tuple[int, int] = (112, 150)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_loaded() -> None:
    # Importing the zoo modules registers their models.
    from models import compact, efficientnet, tv  # noqa: F401


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}"
        ) from None


def create(
    name: str,
    num_classes: int = 7,
    dropout: float = 0.2,
    pretrained: bool = False,
    weights_path: str | None = None,
) -> nn.Module:
    """Build a registered network.

    Args:
        name: a name from :func:`list_models`.
        num_classes: size of the classifier output.
        dropout: dropout rate before the classifier.
        pretrained: load the ImageNet weights that ship on disk (only models that have them).
        weights_path: a state-dict file to load instead (torchvision models).
    """
    spec = get_spec(name)
    return spec.builder(
        num_classes=num_classes, dropout=dropout, pretrained=pretrained, weights_path=weights_path
    )
