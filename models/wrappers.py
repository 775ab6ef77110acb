"""Wrappers that put preprocessing inside the model, so training and serving share it.

Every network in this project is trained and exported as ``uint8 [N, H, W, 3] RGB`` in:
scaling and normalisation live here, never in the data pipeline or the gateway.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class Preprocess(nn.Module):
    """``uint8 [N, H, W, 3]`` -> normalised ``float32 [N, 3, H, W]`` (channels-last memory)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("scale", (1.0 / (255.0 * torch.tensor(std))).view(1, 3, 1, 1))
        self.register_buffer(
            "shift", (torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # permute of an NHWC tensor is an NCHW view in channels-last layout: no copy.
        x = x.permute(0, 3, 1, 2).to(self.scale.dtype)
        return x * self.scale - self.shift


class ImageClassifier(nn.Module):
    """A network with its preprocessing: ``uint8 [N, H, W, 3]`` -> logits ``[N, C]``."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.preprocess = Preprocess(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(x))
