"""A model's outputs on the images of a data frame, read and resized as for evaluation (with
each row's own age, sex and body site for a model that fuses them)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from contracts.errors import DataError
from models.fusion import uses_clinical
from training.augment import eval_transform
from training.datamodule import LesionDataset, collate


@torch.no_grad()
def predict(
    model: nn.Module, frame: pd.DataFrame, size: tuple[int, int], batch_size: int = 64
) -> np.ndarray:
    """``model``'s outputs ``[N, 7]`` (float64) on the images of ``frame``, in row order.

    Args:
        model: ``uint8 [N, H, W, 3]`` -> logits or probabilities (of a gated model,
            ``(probabilities, ood_score)``, the probabilities). A model that fuses the
            clinical metadata (``models.fusion.uses_clinical``) also gets each row's encoding
            (``contracts.clinical``) as its second argument.
        frame: rows with a ``path`` column (``training.data`` columns).
        size: ``(height, width)`` the model takes.
        batch_size: images per forward pass.

    Raises:
        DataError: ``frame`` is empty.
    """
    if frame.empty:
        raise DataError("no images to evaluate: the split is empty")
    dataset = LesionDataset(frame, eval_transform(size))
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    model.eval()
    fused = uses_clinical(model)
    outputs = [
        _first(model(batch["image"], batch["clinical"]) if fused else model(batch["image"]))
        .float()
        .numpy()
        for batch in loader
    ]
    return np.concatenate(outputs).astype(np.float64)


def _first(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output
