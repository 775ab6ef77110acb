"""Wrappers that put preprocessing inside the model, so training and serving share it.

Every network in this project is trained and exported as ``uint8 [N, H, W, 3] RGB`` in:
scaling and normalisation live here, never in the data pipeline or the gateway.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn as nn


def _check_input(x: torch.Tensor) -> None:
    # A float batch would still run and silently give garbage: fail loudly in eager mode.
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[3] != 3:
        raise ValueError(
            f"ImageClassifier takes uint8 RGB images [N, H, W, 3], got {x.dtype} "
            f"{list(x.shape)}: pass the data pipeline's uint8 batch, not a normalised tensor"
        )


class Preprocess(nn.Module):
    """``uint8 [N, H, W, 3]`` -> normalised ``float32 [N, 3, H, W]`` (channels-last memory).

    The output of a contiguous NHWC batch is channels-last, which CPU (oneDNN) and GPU
    convolutions prefer, so no layout copy happens anywhere between here and the network.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("scale", (1.0 / (255.0 * torch.tensor(std))).view(1, 3, 1, 1))
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Checked only in eager mode: the exported graph stays free of Python-side branches
        # (tracing would bake them in with a warning); Triton's config pins dtype and shape.
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            _check_input(x)
        # permute of an NHWC tensor is an NCHW view in channels-last layout: no copy.
        x = x.permute(0, 3, 1, 2).to(self.scale.dtype)
        return x * self.scale - self.shift


class ImageClassifier(nn.Module):
    """A network with its preprocessing: ``uint8 [N, H, W, 3]`` -> logits ``[N, C]``.

    ``clinical`` (the patient metadata a fusion model takes, ``models.fusion``) is accepted and
    ignored, so every wrapper (probabilities, TTA, ensembles, the gate) passes the same two
    arguments whichever kind of network it holds.
    """

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.preprocess = Preprocess(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.preprocess(x))


class IgnoresClinical(nn.Module):
    """A module of one argument (``image``) taking ``(image, clinical=None)`` as every
    wrapper of the project calls it, ``clinical`` ignored: a classifier written before the
    fusion models, or an image-only ``model.pt`` exported before them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(image)


class IgnoresClinicalPair(IgnoresClinical):
    """:class:`IgnoresClinical` of an explainer (``image -> (logits, cam)``)."""

    # The explainer's pair, not one tensor (no ``type:`` comment here: TorchScript reads it).
    def forward(
        self, image: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(image)

    def map_logits(self, image: torch.Tensor, clinical: torch.Tensor | None = None) -> Any:
        return self.model.map_logits(image)

    def facts(self) -> Any:
        return self.model.facts()


def _positional_arguments(module: nn.Module) -> int:
    """How many positional arguments ``module``'s forward takes (without ``self``)."""
    schema = getattr(module.forward, "schema", None)  # a TorchScript method
    if schema is not None:
        return len(schema.arguments) - 1
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return 2
    kinds = [p.kind for p in parameters]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return 2
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(kind in positional for kind in kinds)


def clinical_argument(module: nn.Module, pair: bool = False) -> nn.Module:
    """``module`` itself when its forward takes ``(image, clinical)``, else
    :class:`IgnoresClinical` of it (:class:`IgnoresClinicalPair` with ``pair``, for an
    explainer): what wrappers hold, so that they may always pass both."""
    if isinstance(module, IgnoresClinical) or _positional_arguments(module) >= 2:
        return module
    return IgnoresClinicalPair(module) if pair else IgnoresClinical(module)
