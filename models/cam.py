"""Class activation maps (Zhou et al. 2016): where a network looked, for every class, in one
forward pass and without gradients.

Every network here that ends in global average pooling and ONE linear layer
(``logits_c = b_c + sum_k w_ck * mean_xy F_k(x, y)``, ``F`` the last feature map, ``[K, h, w]``)
has the class activation map

    CAM_c(x, y) = sum_k w_ck * F_k(x, y) + b_c

on the feature map's own grid (``h x w``: 4 x 5 for EfficientNet-Lite0 at 112 x 150, 7 x 9 for
``compact_cnn``). With the bias added to every cell the map's MEAN over the grid is exactly the
class's logit (before any temperature): the map is in logit units, a cell's value is what the
logit would be if the whole image looked like that cell, and :func:`check_cam` verifies the
identity on real images. (Adding ``b_c / (h w)`` instead would make the bias part of the SUM
equal ``b_c`` but not the map's mean: ``mean_xy`` of the weighted features is already the
logit's feature part.) Dropout before the linear layer is the
identity in eval mode, the only mode a map is computed in.

:func:`cam_network` splits a registered network at its pooling, per architecture, reusing the
network's own modules (no copy) so that its logits and penultimate features are computed by the
same operations as its ``forward``: ``compact_cnn``, timm's EfficientNet-Lite0/1/2 and
torchvision's ResNet-18/50. MobileNetV3 has no class activation map (its head is
``Linear -> Hardswish -> Dropout -> Linear`` after the pooling): :class:`CamUnsupported`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from contracts.errors import ConfigError

# The map's mean over the grid must give the logit within this much, relative to
# max(1, |logit|) (float32 sums over up to 2048 channels, summed in another order).
CAM_CHECK_TOLERANCE = 1e-4


class CamUnsupported(ConfigError):
    """A network without a class activation map (not global average pooling + one linear)."""


def class_activation_map(
    fmap: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """``[N, K, h, w]`` feature map, ``[C, K]`` weights and ``[C]`` bias -> ``[N, C, h, w]``:
    ``sum_k w_ck F_k + b_c`` (a 1 x 1 convolution; its mean over the grid is the logit)."""
    return F.conv2d(fmap, weight[:, :, None, None], bias)


class CamNetwork(nn.Module):
    """A network split at its global average pooling: ``float [N, 3, H, W]`` ->
    ``(logits [N, C], features [N, K], cam [N, C, h, w])`` in one pass.

    ``logits`` are the network's own (the same modules, in the same order as its ``forward``),
    ``features`` what its last linear layer reads (the penultimate features), ``cam`` the
    class activation map of every class (module doc). Subclasses say, per architecture, where
    the feature map is and how the network pools it; ``net`` is the network itself, not a copy.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map ``[N, K, h, w]`` (before the pooling)."""
        raise NotImplementedError

    def head_input(self, fmap: torch.Tensor) -> torch.Tensor:
        """The pooled features ``[N, K]`` the linear layer reads (pooling, flatten, dropout)."""
        raise NotImplementedError

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The linear layer: ``[N, K]`` -> logits ``[N, C]``."""
        raise NotImplementedError

    def head_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def head_bias(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # ``clinical`` is a fusion model's (FusionCamNetwork); an image network ignores it.
        fmap = self.feature_map(x)
        features = self.head_input(fmap)
        logits = self.head(features)
        cam = class_activation_map(fmap.float(), self.head_weight(), self.head_bias())
        return logits.float(), features.float(), cam


class CompactCam(CamNetwork):
    """``models.compact.CompactCNN``: ``features`` -> ``pool`` -> ``dropout`` -> ``classifier``."""

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

    def head_input(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.net.dropout(self.net.pool(fmap).flatten(1))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.classifier(features)

    def head_weight(self) -> torch.Tensor:
        return self.net.classifier.weight

    def head_bias(self) -> torch.Tensor:
        return self.net.classifier.bias


class EfficientNetCam(CamNetwork):
    """timm's EfficientNet(-Lite): ``forward_features`` (ends with ``conv_head`` + ``bn2``),
    ``forward_head(pre_logits=True)`` (average pooling, dropout), ``classifier``."""

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def head_input(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(fmap, pre_logits=True)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.classifier(features)

    def head_weight(self) -> torch.Tensor:
        return self.net.classifier.weight

    def head_bias(self) -> torch.Tensor:
        return self.net.classifier.bias


class ResNetCam(CamNetwork):
    """torchvision's ResNet with this project's head ``fc = Sequential(Dropout, Linear)``
    (``models.tv``)."""

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def head_input(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.net.fc[0](torch.flatten(self.net.avgpool(fmap), 1))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.fc[1](features)

    def head_weight(self) -> torch.Tensor:
        return self.net.fc[1].weight

    def head_bias(self) -> torch.Tensor:
        return self.net.fc[1].bias


def _linear_with_bias(module: object) -> bool:
    return isinstance(module, nn.Linear) and module.bias is not None


def _is_average(pool: object) -> bool:
    """An average pooling to 1 x 1 (timm's ``SelectAdaptivePool2d('avg')`` or torch's)."""
    if isinstance(pool, nn.AdaptiveAvgPool2d):
        return pool.output_size in (1, (1, 1))
    is_identity = getattr(pool, "is_identity", None)
    return getattr(pool, "pool_type", None) == "avg" and callable(is_identity) and not is_identity()


def cam_network(net: nn.Module, head: bool = True) -> CamNetwork:
    """``net`` split at its global average pooling (:class:`CamNetwork`), sharing its modules.

    Args:
        net: a registered network.
        head: whether ``net`` must end in its own linear layer; False for the backbone of a
            fusion model (``models.fusion``), whose head is the identity and whose linear
            layer is the fusion's (:class:`FusionCamNetwork`).

    Raises:
        CamUnsupported: ``net`` does not end in global average pooling and one linear layer
            with a bias, or its architecture is not one of those this module knows.
    """
    from torchvision.models import ResNet

    from models.compact import CompactCNN

    def linear(module: object) -> bool:
        return _linear_with_bias(module) or (not head and isinstance(module, nn.Identity))

    def split(cls: type[CamNetwork]) -> CamNetwork:
        return cls(net) if head else _backbone_class(cls)(net)

    if isinstance(net, CompactCNN) and linear(net.classifier):
        if _is_average(net.pool):
            return split(CompactCam)
    elif isinstance(net, ResNet):
        fc = net.fc
        if (
            isinstance(fc, nn.Sequential)
            and len(fc) == 2
            and isinstance(fc[0], nn.Dropout)
            and linear(fc[1])
            and _is_average(net.avgpool)
        ):
            return split(ResNetCam)
    elif (
        hasattr(net, "forward_features")
        and hasattr(net, "forward_head")
        and hasattr(net, "conv_head")
        and linear(getattr(net, "classifier", None))
        and _is_average(getattr(net, "global_pool", None))
    ):
        return split(EfficientNetCam)
    raise CamUnsupported(
        f"{type(net).__name__} has no class activation map here: it needs global average "
        "pooling followed by one linear layer (compact_cnn, efficientnet_lite0/1/2, resnet18/50; "
        "MobileNetV3's head has a hidden layer). Export it without the map (--no-cam)"
    )


def _backbone_forward(
    self: CamNetwork, x: torch.Tensor, clinical: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pooled features, pooled features, feature map)``: a fusion backbone's forward, which
    has no linear layer of its own (TorchScript compiles every submodule's forward)."""
    fmap = self.feature_map(x)
    features = self.head_input(fmap)
    return features, features, fmap


_BACKBONES: dict[type, type] = {}


def _backbone_class(cls: type[CamNetwork]) -> type[CamNetwork]:
    """``cls`` (a :class:`CamNetwork`) for a fusion model's backbone: the same split, whose
    forward needs no head of its own (:func:`_backbone_forward`)."""
    if cls not in _BACKBONES:
        name = f"{cls.__name__}Backbone"
        _BACKBONES[cls] = type(
            name,
            (cls,),
            {"forward": _backbone_forward, "__module__": __name__, "__qualname__": name},
        )
    return _BACKBONES[cls]


class FusionCamNetwork(nn.Module):
    """The class activation map of a ``models.fusion.FusionClassifier``: ``(uint8 image,
    clinical) -> (logits, image features, cam)``.

    Its one linear layer reads ``[image features, clinical features]``, so the logit is
    ``b_c + sum_k w_ck mean_xy F_k + sum_j v_cj g_j`` (``g`` the clinical branch's output). The
    map of a cell is the image part of that cell plus the clinical part plus the bias:

        CAM_c(x, y) = sum_k w_ck F_k(x, y) + (sum_j v_cj g_j + b_c)

    whose mean over the grid is the logit, as for an image-only network (module doc). The
    clinical part is the same in every cell: the form says nothing about where to look. The
    features returned are the IMAGE features alone (what the out-of-distribution gate reads).
    """

    def __init__(self, fusion: nn.Module) -> None:
        super().__init__()
        self.fusion = fusion
        self.network = cam_network(fusion.net, head=False)

    def forward(
        self, image: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fusion = self.fusion
        fmap = self.network.feature_map(fusion.preprocess(image))
        features = self.network.head_input(fmap)
        extra = fusion.clinical_features(image, clinical)
        logits = fusion.head(features, extra)
        k = features.shape[1]
        weight = fusion.classifier.weight
        # The clinical part and the bias: one value per image and class, added to every cell.
        offset = torch.matmul(extra.float(), weight[:, k:].t().float()) + fusion.classifier.bias
        cam = class_activation_map(fmap.float(), weight[:, :k], offset.new_zeros(offset.shape[1]))
        return logits.float(), features.float(), cam + offset[:, :, None, None]


class CamClassifier(nn.Module):
    """A classifier's preprocessing and its :class:`CamNetwork`: ``uint8 [N, H, W, 3]`` (and
    the clinical input of a fusion model) -> ``(logits, features, cam)``, the logits those of
    the ``ImageClassifier`` or ``FusionClassifier`` it is built from (whose modules it shares,
    not copies).

    Raises:
        CamUnsupported: the classifier is neither of a network with a map.
    """

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        from models.fusion import FusionClassifier
        from models.wrappers import ImageClassifier

        self.fused = isinstance(classifier, FusionClassifier)
        if self.fused:
            self.preprocess = nn.Identity()
            self.network: nn.Module = FusionCamNetwork(classifier)
            return
        if not isinstance(classifier, ImageClassifier):
            raise CamUnsupported(
                f"{type(classifier).__name__} is not a network with its preprocessing "
                "(models.wrappers.ImageClassifier): an exported TorchScript model has no "
                "feature map to take a class activation map from; export from the checkpoint"
            )
        self.preprocess = classifier.preprocess
        self.network = cam_network(classifier.net)

    def forward(
        self, image: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.network(self.preprocess(image), clinical)


@torch.no_grad()
def check_cam(
    model: nn.Module,
    images: torch.Tensor,
    classifier: nn.Module | None = None,
    clinical: torch.Tensor | None = None,
) -> tuple[float | None, float]:
    """Check a :class:`CamClassifier` on ``images`` (both modules in eval mode): the map's mean
    over the grid must be the logit, and its logits the classifier's it was built from.

    Returns:
        ``(max abs difference of the logits from the classifier's, or None without it; max
        difference of the map's grid mean from the logits, relative to max(1, |logit|))``.

    Raises:
        ConfigError: either is over :data:`CAM_CHECK_TOLERANCE` (the split is not the network's:
            wrong layer, or a head that is not global average pooling + linear), or a module in
            training mode.
    """
    if model.training or (classifier is not None and classifier.training):
        raise ConfigError("the class activation map is checked in eval mode (dropout off)")
    logits, _features, cam = model(images, clinical)
    logit_diff = None
    if classifier is not None:
        expected = classifier(images, clinical).float()
        logit_diff = float((logits - expected).abs().max())
        if not logit_diff <= CAM_CHECK_TOLERANCE * max(1.0, float(expected.abs().max())):
            raise ConfigError(
                f"the class activation map's split of {type(classifier).__name__} gives other "
                f"logits than the network (by {logit_diff:.3g}): the split is not this network's"
            )
    mean_diff = float(((cam.mean(dim=(2, 3)) - logits).abs() / logits.abs().clamp_min(1.0)).max())
    if not mean_diff <= CAM_CHECK_TOLERANCE:
        raise ConfigError(
            f"the class activation map's mean over the grid differs from the logit by "
            f"{mean_diff:.3g} (relative): the network's head is not average pooling + linear"
        )
    return logit_diff, mean_diff
