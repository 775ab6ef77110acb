"""Ensembles: several models behind one input contract, their probabilities averaged.

Members are ``uint8 [N, H, W, 3] -> probabilities [N, 7]`` modules (exported ``model.pt``
files or classifiers wrapped in ``training.export.ProbabilityModel``) that take the same input size.
The ensemble is one TorchScript module with the same contract, so Triton and the gateway
serve it like any single model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from contracts.errors import ConfigError
from models.wrappers import clinical_argument


class Ensemble(nn.Module):
    """Weighted mean of the members' probabilities.

    Args:
        members: probability models with a common input size.
        weights: one non-negative weight per member (normalised to sum 1); default equal.
    """

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float] | None = None):
        super().__init__()
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least 2 members, got {len(members)}")
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        if len(weights) != len(members) or min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(
                f"ensemble weights {weights} must be one non-negative number per member "
                f"({len(members)}) with a positive sum"
            )
        self.members = nn.ModuleList([clinical_argument(m) for m in members])
        self.register_buffer("weights", torch.tensor(weights) / sum(weights))

    def forward(self, images: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        # ``clinical``: the patient metadata, for members that fuse it (the others ignore it).
        total = torch.zeros(0)
        for i, member in enumerate(self.members):
            probs = member(images, clinical) * self.weights[i]
            total = probs if i == 0 else total + probs
        return total
