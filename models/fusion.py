"""Metadata fusion: a registered image network and the patient's age, sex and body site.

``FusionClassifier`` maps ``uint8 [N, H, W, 3]`` RGB and the clinical encoding
(``contracts.clinical``, ``float32 [N, D]``) to logits ``[N, C]``:

    logits = classifier(dropout(concat(image_features, mlp(clinical))))

``image_features`` are the backbone's pooled features (its own head replaced by the identity,
so its pooling and dropout stay), ``mlp`` a small two-layer network on the encoding. The
classifier is ONE linear layer on the concatenation, so that

- the class activation map still holds (``models.cam.FusionCamNetwork``): each cell's map is
  the image part of that cell plus the clinical part plus the bias, whose mean over the grid is
  the logit;
- the out-of-distribution gate reads the IMAGE features alone (``image_features``): how
  familiar a photo looks does not depend on the form that came with it.

``clinical`` may be None (eager callers that have no metadata): every field is then unknown,
the vector :data:`contracts.clinical.UNKNOWN`, which training shows the network on purpose
(``data.clinical_dropout``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from contracts import clinical as encoding
from models.wrappers import Preprocess

CLINICAL_HIDDEN = 32


def strip_head(net: nn.Module) -> int:
    """Replace a registered network's final linear layer by the identity, in place, keeping its
    pooling and dropout; returns the width of the features it now gives.

    Raises:
        ValueError: a network whose head this function does not know (MobileNetV3's has a
            hidden layer; the fusion needs pooled features straight before one linear layer).
    """
    from torchvision.models import ResNet

    from models.compact import CompactCNN

    if isinstance(net, CompactCNN):
        width = net.classifier.in_features
        net.classifier = nn.Identity()
        return int(width)
    if isinstance(net, ResNet) and isinstance(net.fc, nn.Sequential):
        width = net.fc[1].in_features
        net.fc[1] = nn.Identity()
        return int(width)
    if hasattr(net, "reset_classifier") and hasattr(net, "num_features"):  # timm
        net.reset_classifier(0)
        return int(net.num_features)
    raise ValueError(
        f"{type(net).__name__} cannot be fused with the clinical metadata: its head is not "
        "pooled features + one linear layer (compact_cnn, efficientnet_lite0/1/2, resnet18/50)"
    )


class FusionClassifier(nn.Module):
    """A network with its preprocessing and the clinical branch (module doc).

    Args:
        net: a registered network; its final linear layer is replaced here (:func:`strip_head`).
        mean, std: the network's normalisation (its ``ModelSpec``).
        num_classes: size of the output.
        dropout: dropout on the fused features, before the classifier.
        clinical_dim: length of the encoding (:data:`contracts.clinical.DIM`).
        hidden: width of the clinical branch.
    """

    def __init__(  # noqa: PLR0913 (the network, its normalisation and the head's sizes)
        self,
        net: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        num_classes: int = 7,
        dropout: float = 0.2,
        clinical_dim: int = encoding.DIM,
        hidden: int = CLINICAL_HIDDEN,
    ) -> None:
        super().__init__()
        self.preprocess = Preprocess(mean, std)
        self.image_dim = strip_head(net)
        self.net = net
        self.clinical_dim = clinical_dim
        self.clinical = nn.Sequential(
            nn.Linear(clinical_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout)
        # Registered last: the last nn.Linear of the module is the one that gives the logits.
        self.classifier = nn.Linear(self.image_dim + hidden, num_classes)
        self.register_buffer("unknown", torch.from_numpy(encoding.UNKNOWN.copy()).view(1, -1))

    def clinical_or_unknown(
        self, image: torch.Tensor, clinical: torch.Tensor | None
    ) -> torch.Tensor:
        """``clinical`` as float32 ``[N, D]``, or every field unknown when None."""
        if clinical is None:
            return self.unknown.expand(image.shape[0], -1)
        return clinical.to(self.unknown.dtype)

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled features ``[N, K]`` of ``uint8`` images."""
        return self.net(self.preprocess(image))

    def clinical_features(
        self,
        image: torch.Tensor,
        clinical: torch.Tensor | None,
    ) -> torch.Tensor:
        """The clinical branch's output ``[N, hidden]``."""
        return self.clinical(self.clinical_or_unknown(image, clinical))

    def head(self, features: torch.Tensor, clinical_features: torch.Tensor) -> torch.Tensor:
        """The logits of image features and clinical features."""
        fused = torch.cat([features.to(clinical_features.dtype), clinical_features], dim=1)
        return self.classifier(self.dropout(fused))

    def forward(
        self,
        image: torch.Tensor,
        clinical: torch.Tensor | None = None,
    ) -> torch.Tensor:
        features = self.image_features(image)
        return self.head(features, self.clinical_features(image, clinical))


def uses_clinical(module: nn.Module) -> bool:
    """Whether ``module`` (or anything inside it) takes the clinical input: a
    :class:`FusionClassifier`, or a module that says so with ``takes_clinical = True`` (an
    exported fusion version loaded back)."""
    return any(
        isinstance(m, FusionClassifier) or getattr(m, "takes_clinical", False) is True
        for m in module.modules()
    )
