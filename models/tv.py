"""torchvision classics: ResNet-18/50 and MobileNetV3 small/large, built without weights.

No torchvision weights ship with this project (they download at run time, which this
deployment cannot). ``weights_path`` loads a torchvision ImageNet state dict the user has
saved, strictly, before the 1000-class head is replaced.
"""

from __future__ import annotations

from functools import partial

import torch.nn as nn
import torchvision.models as tvm

from models.registry import ModelSpec, load_strict, read_state_dict, register


def _replace_head(net: nn.Module, num_classes: int, dropout: float) -> None:
    if isinstance(net, tvm.ResNet):
        net.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(net.fc.in_features, num_classes))
    else:  # MobileNetV3: classifier = Linear, Hardswish, Dropout, Linear
        head = net.classifier
        head[2] = nn.Dropout(dropout)
        head[3] = nn.Linear(head[3].in_features, num_classes)


def _build(
    arch: str, num_classes: int, dropout: float, pretrained: bool, weights_path: str | None
) -> nn.Module:
    # create() rejects pretrained=True: only weights_path brings weights here.
    net = getattr(tvm, arch)(weights=None)
    if weights_path:
        load_strict(
            net,
            read_state_dict(weights_path),
            f"weights_path {weights_path!r}",
            f"Pass torchvision's {arch} state dict with its 1000-class ImageNet head, e.g. "
            f"torch.save(torchvision.models.{arch}(weights='DEFAULT').state_dict(), path)",
        )
    _replace_head(net, num_classes, dropout)
    return net


for _arch, _what in (
    ("resnet18", "ResNet-18 (11M params)"),
    ("resnet50", "ResNet-50 (24M params)"),
    ("mobilenet_v3_small", "MobileNetV3-Small (1.5M params)"),
    ("mobilenet_v3_large", "MobileNetV3-Large (4.2M params)"),
):
    register(
        ModelSpec(
            name=_arch,
            builder=partial(_build, _arch),
            input_size=(112, 150),
            description=f"torchvision {_what}, from scratch or weights_path",
        )
    )
