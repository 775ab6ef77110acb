"""The modules that turn logits into what Triton serves, and back.

``ProbabilityModel`` is the exported contract (``uint8 [N, H, W, 3]`` -> probabilities);
``LogProbabilities`` turns any probability model (an exported ``model.pt``, TTA, an ensemble)
back into logits, so the evaluation and export treat every model alike; ``FirstOutput`` gives
the probabilities of a gated version's ``model.pt`` (``training.export.ood.GatedModel``, which
also returns a score).

Every module here (and every TTA, ensemble, gate and explainer module) takes
``(image, clinical=None)``: ``clinical`` is the patient metadata of a fusion model
(``contracts.clinical``, ``float32 [N, D]``), passed on to the network, which ignores it when it
is image-only. What Triton serves must take EXACTLY its declared inputs (the PyTorch backend
refuses a model whose argument count is not the config's, and any argument that is not a plain
tensor): :func:`served_module` gives the served top-level module the forward of one input
(image-only) or two (fusion), on the same modules and buffers. :class:`ExportedVersion` is the
other way round: an exported ``model.pt`` loaded back, taking ``(image, clinical=None)``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from contracts.clinical import UNKNOWN
from contracts.errors import ConfigError
from models.wrappers import clinical_argument


class ProbabilityModel(nn.Module):
    """``uint8 [N, H, W, 3]`` RGB -> ``float32`` probabilities ``[N, C]``: what Triton serves.

    ``temperature`` (a buffer, 1.0 by default) divides the logits before the softmax; the
    evaluation's calibration sets it, and it travels inside ``model.pt``.
    """

    def __init__(self, classifier: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        self.classifier = clinical_argument(classifier)
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, image: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        return self.serve(image, clinical)

    def serve(self, image: torch.Tensor, clinical: torch.Tensor | None) -> torch.Tensor:
        logits = self.classifier(image, clinical).float()
        return torch.softmax(logits / self.temperature, dim=1)


LOG_FLOOR = 1e-30  # the smallest probability LogProbabilities takes the log of


class LogProbabilities(nn.Module):
    """``log`` of a probability model's output: exact logits for softmax, temperature and export
    (:func:`training.export.writer.export_model` applies ``softmax(logits / T)`` to it). Of a
    model returning a tuple (a gated or explained ``model.pt``), its first output's."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = clinical_argument(model)

    def forward(self, images: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model(images, clinical)
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
        self.model = clinical_argument(model)

    def forward(self, images: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(images, clinical)[0]


# No return annotation: TorchScript infers each served class's own (one tensor or a tuple), and
# the PyTorch backend then sees the exact output types, as before the fusion models.
def _image_input(self, image: torch.Tensor):
    return self.serve(image, None)


def _image_and_clinical(self, image: torch.Tensor, clinical: torch.Tensor):
    return self.serve(image, clinical)


_SERVED: dict[tuple[type, bool], type] = {}


def served_module(model: nn.Module, clinical: bool) -> nn.Module:
    """``model`` (a module with ``serve(image, clinical)``: ``ProbabilityModel``,
    ``GatedModel`` and their explained forms) with the forward Triton calls: ``forward(image)``
    for an image-only version, ``forward(image, clinical)`` for a fusion one.

    A shallow copy of another class, a subclass whose only difference is ``forward``: the same
    submodules and buffers under the same names (so an image-only ``model.pt`` is laid out as
    it always was), and TorchScript's schema lists exactly the served inputs.

    Raises:
        ConfigError: ``model`` has no ``serve``.
    """
    if not callable(getattr(model, "serve", None)):
        raise ConfigError(f"{type(model).__name__} has no serve(image, clinical) to export")
    base = type(model)
    while base in _SERVED.values():
        base = base.__mro__[1]
    key = (base, clinical)
    if key not in _SERVED:
        forward = _image_and_clinical if clinical else _image_input
        _SERVED[key] = type(
            base.__name__,
            (base,),
            {"forward": forward, "__module__": base.__module__, "__doc__": base.__doc__},
        )
    served = copy.copy(model)
    served.__class__ = _SERVED[key]
    return served


class ExportedVersion(nn.Module):
    """An exported ``model.pt`` loaded back, taking ``(image, clinical=None)`` as every module
    here does: an image-only version gets the image alone; a fusion version gets the clinical
    rows, or every field unknown (``contracts.clinical.UNKNOWN``) when none are given.

    Args:
        model: the loaded TorchScript module.
        clinical_dim: the version's ``metadata.json`` ``clinical.dim``; None: image-only.
    """

    def __init__(self, model: nn.Module, clinical_dim: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.takes_clinical = clinical_dim is not None
        self.clinical_dim = int(clinical_dim or 0)
        unknown = torch.from_numpy(UNKNOWN.copy()) if self.takes_clinical else torch.zeros(0)
        self.register_buffer("unknown", unknown.view(1, -1))

    def forward(
        self, image: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if not self.takes_clinical:
            return self.model(image)
        if clinical is None:
            clinical = self.unknown.expand(image.shape[0], -1)
        return self.model(image, clinical.float())
