"""Test-time augmentation: average the probabilities over flipped and rotated copies.

Works on the project's one input contract, ``uint8 [N, H, W, 3]``, so the module can wrap an
exported model and be exported itself (TorchScript). Dermoscopy has no canonical orientation,
so flips and rotations are label-preserving.

On non-square images (HAM10000 is 4:3, e.g. 112x150) a 90-degree rotation turns an HxW image
into WxH, a shape the model was neither trained nor exported for. Only the four operations
that keep the shape are allowed there: identity, horizontal flip, vertical flip and 180-degree
rotation (the symmetries of a rectangle). ``rot90``/``rot270`` need a square input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from contracts.errors import ConfigError
from models.wrappers import clinical_argument

OPS: tuple[str, ...] = ("identity", "hflip", "vflip", "rot180", "rot90", "rot270")
SHAPE_KEEPING: tuple[str, ...] = ("identity", "hflip", "vflip", "rot180")
_SQUARE_ONLY = frozenset({"rot90", "rot270"})


def augment(images: torch.Tensor, op: str) -> torch.Tensor:
    """One augmentation of an NHWC batch (dims 1 and 2 are height and width)."""
    if op == "identity":
        return images
    if op == "hflip":
        return images.flip([2])
    if op == "vflip":
        return images.flip([1])
    if op == "rot180":
        return images.flip([1, 2])
    if op == "rot90":
        return images.rot90(1, [1, 2])
    if op == "rot270":
        return images.rot90(3, [1, 2])
    raise ValueError("unknown TTA operation " + op)


def check_ops(ops: Sequence[str], input_size: tuple[int, int] | None = None) -> tuple[str, ...]:
    """Validate TTA operations against :data:`OPS` and the input shape.

    Raises:
        ConfigError: an unknown operation, none at all, or a 90-degree rotation of a
            non-square input size.
    """
    ops = tuple(ops)
    unknown = [op for op in ops if op not in OPS]
    if unknown or not ops:
        raise ConfigError(f"TTA operations {list(ops)} are not valid; choose from {OPS}")
    if input_size is not None and input_size[0] != input_size[1] and _SQUARE_ONLY & set(ops):
        raise ConfigError(
            f"rot90/rot270 turn a {input_size[0]}x{input_size[1]} image into "
            f"{input_size[1]}x{input_size[0]}, which the model was not built for; on non-square "
            f"images use only {SHAPE_KEEPING}"
        )
    return ops


class TTA(nn.Module):
    """Average ``model``'s probabilities over augmented copies of the batch.

    Args:
        model: ``uint8 [N, H, W, 3] -> probabilities [N, C]`` (an exported ``model.pt``, or
            ``training.export.ProbabilityModel`` around a classifier).
        ops: operations from :data:`OPS`; default :data:`SHAPE_KEEPING`.
        input_size: ``(height, width)`` the model takes, to reject rotations that change it.
    """

    def __init__(
        self,
        model: nn.Module,
        ops: Sequence[str] = SHAPE_KEEPING,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.model = clinical_argument(model)
        self.ops = list(check_ops(ops, input_size))

    def forward(self, images: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        # ``clinical`` (a fusion model's patient metadata) is the same for every view.
        square = images.shape[1] == images.shape[2]
        total = torch.zeros(0)
        for i, op in enumerate(self.ops):
            if not square and (op == "rot90" or op == "rot270"):
                raise ValueError("rot90/rot270 test-time augmentation needs square images")
            probs = self.model(augment(images, op), clinical)
            total = probs if i == 0 else total + probs
        return total / len(self.ops)
