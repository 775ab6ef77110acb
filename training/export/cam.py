"""Where the model looked: the class activation map inside the exported model (docs/explain.md).

A version exported with the explanation returns, beside its probabilities (and its
out-of-distribution score when gated), the class activation map of all 7 classes
(:mod:`models.cam`): ``float32 [N, 7, h, w]`` on the network's last feature grid, raw, in logit
units BEFORE the temperature (the map's mean over the grid is the class's logit), named
:data:`contracts.tensors.CAM_OUTPUT_NAME` (``cam__2``). It is always the THIRD returned tensor,
as the ``__2`` says to Triton's PyTorch backend: a version without the gate returns
``(probabilities, placeholder, cam)``, the placeholder an empty ``[N, 0]`` tensor that no
config lists (:class:`ExplainedProbabilityModel`); a gated one ``(probabilities, ood_score,
cam)`` (:class:`training.export.ood.ExplainedGatedModel`). ``model.onnx`` has the named outputs
only (``probabilities__0``, [``ood_score__1``,] ``cam__2``): ONNX Runtime binds them by name.

The modules here give ``uint8 [N, H, W, 3]`` -> ``(logits, cam)`` for each exported variant, the
logits exactly those the variant serves (the same operations in the same order), computed in
the same forward pass as the map:

- :class:`CamLogits`: the network itself (the ``cnn`` variant).
- :class:`CamTTA`: test-time augmentation. Each view's map is mapped back onto the original
  image's grid (a flip or rotation of the image is the same flip or rotation of the grid, undone
  exactly; where the image size is not a multiple of the network's stride the cells of a
  flipped view cover the image shifted by less than one cell) and the views' maps averaged, as
  the views' probabilities are.
- :class:`CamEnsemble`: the members' maps averaged with the ensemble's weights, each in its own
  logit units (before its own temperature); only when every member's grid is the same, else
  :class:`models.cam.CamUnsupported` (export then writes the version without the map).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from contracts.errors import ConfigError
from contracts.labels import NUM_CLASSES
from contracts.tensors import CAM_OUTPUT_NAME
from models.cam import CAM_CHECK_TOLERANCE, CamClassifier, CamUnsupported
from models.wrappers import clinical_argument
from training.export.wrapper import LOG_FLOOR
from training.tta import augment, check_ops

log = logging.getLogger(__name__)

CAM_METHOD = "cam"
CAM_UNITS = "logit"  # before the temperature; the map's mean over the grid is the logit
# Eager vs TorchScript / ONNX Runtime: the largest difference of a map, relative to
# max(1, the largest |value| of that image's eager map) (float32 sums over up to 1280 channels,
# reordered by the JIT or another runtime's kernels).
CAM_TOLERANCE = 1e-4


def unaugment_map(cam: torch.Tensor, op: str) -> torch.Tensor:
    """The map of an augmented view (``training.tta.augment``'s ``op`` of the NHWC image) on the
    original image's grid: ``cam`` is ``[N, C, h, w]``, so the image's height and width (NHWC
    dims 1, 2) are the map's dims 2, 3."""
    if op == "identity":
        return cam
    if op == "hflip":
        return cam.flip([3])
    if op == "vflip":
        return cam.flip([2])
    if op == "rot180":
        return cam.flip([2, 3])
    if op == "rot90":
        return cam.rot90(3, [2, 3])
    if op == "rot270":
        return cam.rot90(1, [2, 3])
    raise ValueError("unknown TTA operation " + op)


class CamLogits(nn.Module):
    """``uint8 [N, H, W, 3]`` -> ``(logits, cam)`` of one network (:class:`CamClassifier`)."""

    def __init__(self, source: CamClassifier) -> None:
        super().__init__()
        self.source = source

    def forward(
        self, image: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, _features, cam = self.source(image, clinical)
        return logits, cam

    def map_logits(self, image: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        """The logits the map's grid mean must equal (eager only; export checks it)."""
        return self.source(image, clinical)[0]

    def facts(self) -> dict[str, Any]:
        """What ``metadata.json``'s ``explain`` says of how the map is made."""
        return {"variant": "cnn"}


class CamTTA(nn.Module):
    """Test-time augmentation with its map: ``(log of the views' mean probabilities, mean of
    the views' maps mapped back)``.

    The first output is exactly ``LogProbabilities(TTA(ProbabilityModel(classifier, T), ops))``
    of the classifier ``source`` was built from (the evaluation's TTA, ``training.tta``).

    Raises:
        ConfigError: an invalid operation for ``input_size`` (``training.tta.check_ops``).
    """

    def __init__(
        self,
        source: CamClassifier,
        temperature: float,
        ops: Sequence[str],
        input_size: tuple[int, int],
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        self.source = source
        self.ops = list(check_ops(ops, input_size))
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(
        self, images: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        total = torch.zeros(0)
        maps = torch.zeros(0)
        for i, op in enumerate(self.ops):
            logits, _features, cam = self.source(augment(images, op), clinical)
            probs = torch.softmax(logits.float() / self.temperature, dim=1)
            back = unaugment_map(cam, op)
            total = probs if i == 0 else total + probs
            maps = back if i == 0 else maps + back
        n = len(self.ops)
        return torch.log((total / n).float().clamp_min(LOG_FLOOR)), maps / n

    def map_logits(
        self, images: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The views' mean logits: what the mean map averages to (a flip keeps a map's mean)."""
        views = [self.source(augment(images, op), clinical)[0] for op in self.ops]
        return torch.stack(views).mean(dim=0)

    def facts(self) -> dict[str, Any]:
        return {"variant": "tta", "views": list(self.ops), "combine": "mean of mapped-back maps"}


class CamEnsemble(nn.Module):
    """An ensemble with its map: ``(log of the weighted mean of the members' probabilities,
    weighted mean of the members' maps)``.

    The first output is exactly ``LogProbabilities(Ensemble([ProbabilityModel(c_i, T_i)],
    weights))`` (``training.ensemble``) of the classifiers the members were built from.

    Raises:
        ConfigError: fewer than 2 members, or bad weights or temperatures.
        CamUnsupported: the members' maps have different grids at ``input_size``.
    """

    def __init__(
        self,
        members: Sequence[CamClassifier],
        temperatures: Sequence[float],
        input_size: tuple[int, int],
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if len(members) < 2 or len(temperatures) != len(members):
            raise ConfigError(
                f"an ensemble needs at least 2 members, each with a temperature "
                f"(got {len(members)} members, {len(temperatures)} temperatures)"
            )
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        if len(weights) != len(members) or min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(f"ensemble weights {weights} must be non-negative, sum positive")
        if not all(t > 0 for t in temperatures):
            raise ConfigError(f"temperatures {list(temperatures)} must be positive")
        grids = [_grid(m, input_size) for m in members]
        if len(set(grids)) != 1:
            raise CamUnsupported(
                f"the ensemble's members have class activation maps on different grids "
                f"{grids} at {input_size[0]}x{input_size[1]}: their maps cannot be averaged "
                "cell by cell"
            )
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(weights) / sum(weights))
        # One 0-d buffer per member, as each member's ProbabilityModel holds its own.
        self.register_buffer("temperatures", torch.tensor([float(t) for t in temperatures]))

    def forward(
        self, images: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        total = torch.zeros(0)
        maps = torch.zeros(0)
        for i, member in enumerate(self.members):
            logits, _features, cam = member(images, clinical)
            probs = torch.softmax(logits.float() / self.temperatures[i], dim=1) * self.weights[i]
            weighted = cam * self.weights[i]
            total = probs if i == 0 else total + probs
            maps = weighted if i == 0 else maps + weighted
        return torch.log(total.float().clamp_min(LOG_FLOOR)), maps

    def map_logits(
        self, images: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The members' weighted mean logits (each before its temperature)."""
        logits = [m(images, clinical)[0] * self.weights[i] for i, m in enumerate(self.members)]
        return torch.stack(logits).sum(dim=0)

    def facts(self) -> dict[str, Any]:
        return {
            "variant": "ensemble",
            "members": len(self.members),
            "combine": "weighted mean of the members' maps, each in its own logit units",
        }


@torch.no_grad()
def _grid(member: nn.Module, input_size: tuple[int, int]) -> tuple[int, int]:
    """The grid ``(h, w)`` of a :class:`CamClassifier`'s map for ``input_size`` images."""
    was = member.training
    member.eval()
    try:
        cam = member(torch.zeros(1, *input_size, 3, dtype=torch.uint8))[2]
    finally:
        member.train(was)
    return int(cam.shape[2]), int(cam.shape[3])


class ExplainedProbabilityModel(nn.Module):
    """``uint8 [N, H, W, 3]`` -> ``(probabilities [N, C], placeholder [N, 0], cam [N, C, h, w])``:
    what Triton serves for an explained version without the gate (module doc).

    ``explainer`` gives ``(logits, cam)`` (:class:`CamLogits`, :class:`CamTTA`,
    :class:`CamEnsemble`); the probabilities are ``softmax(logits / temperature)``, as
    ``training.export.wrapper.ProbabilityModel``'s.
    """

    def __init__(self, explainer: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        self.explainer = clinical_argument(explainer, pair=True)
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(
        self, image: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.serve(image, clinical)

    def serve(
        self, image: torch.Tensor, clinical: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, cam = self.explainer(image, clinical)
        probabilities = torch.softmax(logits.float() / self.temperature, dim=1)
        return probabilities, probabilities[:, :0], cam


def explainer_facts(explainer: nn.Module) -> dict[str, Any]:
    """The explainer's own description (:meth:`CamLogits.facts` & co.), or ``{}``."""
    facts = getattr(explainer, "facts", None)
    return dict(facts()) if callable(facts) else {}


def explain_metadata(grid: Sequence[int], facts: dict[str, Any]) -> dict[str, Any]:
    """``metadata.json``'s ``explain`` for a map on ``grid`` (``[h, w]``)."""
    return {
        "output": CAM_OUTPUT_NAME,
        "method": CAM_METHOD,
        "grid": [int(grid[0]), int(grid[1])],
        "classes": NUM_CLASSES,
        "units": CAM_UNITS,
        "before_temperature": True,
        "bias": "added to every cell: the map's mean over the grid is the class's logit",
        **facts,
    }


@torch.no_grad()
def check_map(
    explainer: nn.Module,
    images: torch.Tensor,
    cam: torch.Tensor,
    clinical: torch.Tensor | None = None,
) -> float:
    """Check a served map against its definition: its mean over the grid must be the logits
    the explainer says it averages to (``map_logits``: the network's, the TTA views' mean, the
    members' weighted mean), within ``models.cam.CAM_CHECK_TOLERANCE`` relative to
    ``max(1, |logit|)``. A map made with another class's weights, or of another layer, fails.

    Returns:
        The largest relative difference.

    Raises:
        ConfigError: over the tolerance, or an explainer without ``map_logits``.
    """
    map_logits = getattr(explainer, "map_logits", None)
    if not callable(map_logits):
        raise ConfigError(
            f"{type(explainer).__name__} does not say which logits its map averages to "
            "(map_logits): use training.export.cam's explainers"
        )
    expected = map_logits(images, clinical).float()
    diff = float(((cam.mean(dim=(2, 3)) - expected).abs() / expected.abs().clamp_min(1.0)).max())
    if not diff <= CAM_CHECK_TOLERANCE:
        raise ConfigError(
            f"the class activation map's mean over the grid differs from the logit by "
            f"{diff:.3g} (relative, > {CAM_CHECK_TOLERANCE:g}): it is not the map of these "
            "classes' weights on the network's last feature map; nothing was written"
        )
    return diff


def no_cam(why: str) -> None:
    """Warn (and log) that the version gets no class activation map, and why; returns None."""
    message = (
        f"the version gets no class activation map (no {CAM_OUTPUT_NAME} output, no `explain` "
        f"in metadata.json): {why}. Pass --no-cam to say so"
    )
    warnings.warn(message, stacklevel=3)
    log.warning(message)


def network_explainer(classifier: nn.Module) -> CamLogits | None:
    """:class:`CamLogits` of a network (an ``ImageClassifier``), or None with a warning
    (:func:`no_cam`) when it has no class activation map (``models.cam.CamUnsupported``)."""
    try:
        return CamLogits(CamClassifier(classifier))
    except CamUnsupported as exc:
        return no_cam(str(exc))
