"""The modules that turn logits into what Triton serves, and back.

``ProbabilityModel`` is the exported contract (``uint8 [N, H, W, 3]`` -> probabilities);
``LogProbabilities`` turns any probability model (an exported ``model.pt``, TTA, an ensemble)
back into logits, so the evaluation and export treat every model alike; ``FirstOutput`` gives
the probabilities of a gated version's ``model.pt`` (``training.export.ood.GatedModel``, which
also returns a score).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from contracts.errors import ConfigError


class ProbabilityModel(nn.Module):
    """``uint8 [N, H, W, 3]`` RGB -> ``float32`` probabilities ``[N, C]``: what Triton serves.

    ``temperature`` (a buffer, 1.0 by default) divides the logits before the softmax; the
    evaluation's calibration sets it, and it travels inside ``model.pt``.
    """

    def __init__(self, classifier: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        self.classifier = classifier
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(image).float()
        return torch.softmax(logits / self.temperature, dim=1)


LOG_FLOOR = 1e-30  # the smallest probability LogProbabilities takes the log of


class LogProbabilities(nn.Module):
    """``log`` of a probability model's output: exact logits for softmax, temperature and export
    (:func:`training.export.writer.export_model` applies ``softmax(logits / T)`` to it). Of a
    model returning a tuple (a gated or explained ``model.pt``), its first output's."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images)
        # A served model.pt with more outputs (score, class activation map) returns a tuple:
        # the probabilities are always its first (contracts/tensors.py). Static in TorchScript.
        probabilities = out[0] if isinstance(out, tuple) else out
        # The floor keeps an exact 0 finite; exp(-69) is below float32's resolution near 1.
        return torch.log(probabilities.float().clamp_min(LOG_FLOOR))


class FirstOutput(nn.Module):
    """The probabilities of a gated or explained model (``(probabilities, ood_score[, cam])``):
    its first output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)[0]
