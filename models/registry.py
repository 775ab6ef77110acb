"""A registry of networks, each with its default input size and normalisation (timm-style).

The spec is the one place that owns input size and normalisation: the exported model bakes
``mean``/``std`` in, and the data pipeline and gateway read ``input_size`` from it (or from the
training config that overrides it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from contracts.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What a registered network needs around it.

    Args:
        name: registry name.
        builder: ``builder(num_classes, dropout, pretrained, weights_path) -> nn.Module``;
            the module maps float ``[N, 3, H, W]`` normalised images to logits ``[N, C]``.
            :func:`create` validates the arguments before calling it.
        input_size: default ``(height, width)``.
        mean: per-channel mean on the 0..1 scale.
        std: per-channel std on the 0..1 scale.
        description: one line for ``--help`` and docs.
        pretrained: whether ImageNet weights ship with the installed packages.
    """

    name: str
    builder: Callable[..., nn.Module] = field(repr=False)
    input_size: tuple[int, int] = (112, 150)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    description: str = ""
    pretrained: bool = False


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
        raise ConfigError(
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
        dropout: dropout rate before the classifier, in ``[0, 1)``.
        pretrained: load the ImageNet weights that ship on disk (only models that have them).
        weights_path: a state-dict file to load instead, before the classifier is replaced.

    Raises:
        ConfigError: unknown name, impossible arguments, or weights that do not fit.
    """
    spec = get_spec(name)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    if pretrained and weights_path:
        raise ConfigError(
            f"both pretrained=true and weights_path={weights_path!r} were given for {name}: "
            "choose one (weights_path replaces the shipped weights)"
        )
    if pretrained and not spec.pretrained:
        shipped = [n for n in list_models() if _REGISTRY[n].pretrained]
        raise ConfigError(
            f"{name} has no ImageNet weights shipped with this project: set pretrained=false "
            f"and pass weights_path=<a state dict of {name}> to start from your own weights, "
            f"or choose a model that ships them ({', '.join(shipped) or 'none'})"
        )
    return spec.builder(
        num_classes=num_classes, dropout=dropout, pretrained=pretrained, weights_path=weights_path
    )


def create_classifier(
    name: str,
    num_classes: int = 7,
    dropout: float = 0.2,
    pretrained: bool = False,
    weights_path: str | None = None,
    clinical: bool = False,
) -> nn.Module:
    """:func:`create` wrapped in ``ImageClassifier`` with the spec's normalisation.

    The result maps ``uint8 [N, H, W, 3]`` RGB to logits ``[N, num_classes]``; arguments as
    for :func:`create`. With ``clinical`` it is a ``models.fusion.FusionClassifier`` instead,
    which also takes the patient metadata (``contracts.clinical``) as its second argument.

    Raises:
        ConfigError: as :func:`create`, or ``clinical`` for a network without a plain
            pooled-features + linear head.
    """
    from models.wrappers import ImageClassifier

    spec = get_spec(name)
    # A fusion model's dropout acts on the fused features (image and clinical) once.
    net = create(name, num_classes, 0.0 if clinical else dropout, pretrained, weights_path)
    if clinical:
        from models.fusion import FusionClassifier

        try:
            return FusionClassifier(net, spec.mean, spec.std, num_classes, dropout)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return ImageClassifier(net, spec.mean, spec.std)


def input_stages(net: nn.Module) -> list[nn.Module]:
    """The network's modules from the input onwards, stage by stage: the stem first, then each
    stage of blocks (timm EfficientNet: ``conv_stem + bn1``, ``blocks[i]``; torchvision ResNet:
    ``conv1 + bn1``, ``layer1``..; MobileNetV3: ``features[i]``, each an inverted-residual
    block; the compact CNN: ``features[i]``, each a single conv, batch-norm or activation layer).

    Raises:
        ConfigError: a network whose stages this function does not know.
    """
    if hasattr(net, "conv_stem") and hasattr(net, "blocks"):  # timm EfficientNet(-Lite)
        return [nn.ModuleList([net.conv_stem, net.bn1]), *net.blocks]
    if hasattr(net, "layer1") and hasattr(net, "conv1"):  # torchvision ResNet
        return [nn.ModuleList([net.conv1, net.bn1]), net.layer1, net.layer2, net.layer3, net.layer4]
    if isinstance(getattr(net, "features", None), nn.Sequential):  # MobileNetV3, compact CNN
        return list(net.features)
    raise ConfigError(f"cannot freeze stages of a {type(net).__name__}: its stages are unknown")


def freeze_input_stages(net: nn.Module, stages: int) -> list[nn.Module]:
    """Freeze the stem and the first ``stages - 1`` stages of blocks (``stages`` counts the stem):
    no gradients for their parameters, and their batch-norm statistics fixed. Frozen early
    stages keep the ImageNet edge and texture filters and save most of the backward pass where
    the feature maps are largest (measured: docs/benchmarks.md, "Training throughput").

    Returns:
        The frozen modules; the caller keeps them in eval mode while training (see
        ``LesionClassifier.train``).

    Raises:
        ConfigError: ``stages`` negative or more than the network has.
    """
    if stages == 0:
        return []
    all_stages = input_stages(net)
    if not 0 < stages < len(all_stages):
        raise ConfigError(
            f"frozen_stages must be in [0, {len(all_stages) - 1}] for this network "
            f"({len(all_stages)} stages, the stem counted), got {stages}"
        )
    frozen = all_stages[:stages]
    for module in frozen:
        module.requires_grad_(False)
        module.eval()
    return frozen


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a plain state dict (a dict of tensors) saved with ``torch.save``.

    Raises:
        ConfigError: the file is missing, unreadable, or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights_path {str(path)!r} does not exist: point it at a .pth file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file; all mean the same
        raise ConfigError(
            f"weights_path {str(path)!r} cannot be read as PyTorch weights ({err}); "
            "save them with torch.save(model.state_dict(), path)"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(
            f"weights_path {str(path)!r} is not a state dict (a dict of name -> tensor); "
            "save one with torch.save(model.state_dict(), path)"
        )
    return state


def load_strict(net: nn.Module, state: dict[str, torch.Tensor], source: str, hint: str) -> None:
    """Load ``state`` into ``net`` by key: every key matched, none left over, shapes equal.

    Args:
        net: the network, before its classifier is replaced.
        state: the state dict to load.
        source: where it came from, for the message (e.g. ``weights_path '/x.pth'``).
        hint: the sentence that tells how to fix a mismatch.

    Raises:
        ConfigError: naming up to three missing, unexpected and misshapen keys each.
    """
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshapen = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{len(found)} {what} (e.g. {', '.join(found[:3])})"
        for what, found in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("misshapen tensors", misshapen),
        )
        if found
    ]
    if problems:
        raise ConfigError(f"{source} does not fit the network: {'; '.join(problems)}. {hint}")
    net.load_state_dict(state, strict=True)
