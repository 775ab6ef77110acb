"""``compact_cnn``: a small CNN of our own that trains from scratch on a 2-core CPU in minutes."""

from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import ModelSpec, load_strict, read_state_dict, register


class CompactCNN(nn.Module):
    """Conv-BN-ReLU blocks, global average pool, dropout, linear classifier.

    Each block halves the resolution (a strided conv in the first, max-pooling after).

    Args:
        num_classes: size of the output.
        dropout: dropout rate before the classifier.
        channels: output channels of each block.
    """

    def __init__(
        self,
        num_classes: int = 7,
        dropout: float = 0.2,
        channels: tuple[int, ...] = (32, 64, 128, 192),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for i, out_ch in enumerate(channels):
            # The first block downsamples by a strided conv instead of conv + pool: same
            # receptive field, half the cost of a training step on CPU (measured).
            stride = 2 if i == 0 else 1
            # No conv bias: the BatchNorm that follows has its own shift.
            layers += [
                nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            layers += [nn.MaxPool2d(2)] if i > 0 else []
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init suits ReLU; PyTorch's default is tuned for no activation.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def _build(
    num_classes: int, dropout: float, pretrained: bool, weights_path: str | None
) -> nn.Module:
    # create() rejects pretrained=True: there are no ImageNet weights for this network.
    net = CompactCNN(num_classes, dropout)
    if weights_path:
        load_strict(
            net,
            read_state_dict(weights_path),
            f"weights_path {weights_path!r}",
            f"Pass a state dict saved from a compact_cnn with num_classes={num_classes}",
        )
    return net


register(
    ModelSpec(
        name="compact_cnn",
        builder=_build,
        input_size=(112, 150),
        description="4 conv-BN-ReLU blocks (32-192 ch), from scratch; fast on CPU",
    )
)
