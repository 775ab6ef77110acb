"""The out-of-distribution score inside the exported model: the second output of a gated version.

A version exported with the gate serves :class:`GatedModel` instead of
:class:`training.export.wrapper.ProbabilityModel`: ``uint8 [N, H, W, 3]`` in,
``(probabilities [N, 7], ood_score [N, 1])`` out, the probabilities exactly those of
``ProbabilityModel`` (``softmax(logits / T)``) and the score higher the further an image is from
the training photos. The score kinds (``metadata.json``'s ``gate.ood.score``):

- ``knn`` (default, chosen by measurement: docs/results.md, "Refusing what is not a lesion
  photo"): deep nearest neighbours (Sun et al. 2022) in two spaces, so that both what the
  network sees and the photo's colours count. ``d = 1 - cos``, the cosine distance to the
  ``k``-th nearest of the training images (a bank of up to 2000, stored in the model), of (a)
  the penultimate features and (b) the square root of the joint RGB histogram (6 x 6 x 6
  bins) of the model input; each distance divided by its 99th percentile on the validation
  split, and the score is the larger of the two. A scene, a document or a texture lies far
  from every dermoscopic photo in one space or the other.
- ``mahalanobis``: the classifier is split at its last ``nn.Linear``
  (:func:`split_classifier`); its penultimate features ``f`` are compared with one Gaussian per
  class fitted on training-split features (class means ``mu_c``, one shared covariance with
  Ledoit-Wolf shrinkage): ``min_c (f - mu_c)^T P (f - mu_c)``, ``P`` the precision. The means
  and the precision's Cholesky factor ``L`` (``P = L L^T``) are buffers of the model, so the
  distance is ``min_c ||f L - mu_c L||^2``: one matrix product, no cancellation.
- ``energy``: ``-T * logsumexp(logits / T)`` (Liu et al. 2020), from the same logits.
- ``msp``: ``-max_c p_c``, the negated maximum softmax probability.

Where the threshold comes from (the validation split) is :mod:`training.export.gate`.
:class:`ExplainedGatedModel` is a gated model that also returns the class activation map
(``training.export.cam``): ``(probabilities, ood_score, cam)``, the same probabilities and score.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from scipy.stats import beta

from contracts.errors import ConfigError, DataError
from contracts.labels import NUM_CLASSES
from models.fusion import FusionClassifier
from models.wrappers import clinical_argument
from training.export.cam import CamLogits

OOD_SCORES: tuple[str, ...] = ("knn", "mahalanobis", "energy", "msp")
DEFAULT_OOD_SCORE = "knn"
KNN_K = 10
HISTOGRAM_BINS = 6  # per channel: a 6 x 6 x 6 joint RGB histogram
# Eager and TorchScript scores may differ by this much, relative to the score's magnitude
# (absolute below 1): float32 sums over hundreds of features are reordered by the JIT.
SCORE_TOLERANCE = 1e-4


class FeatureClassifier(nn.Module):
    """A classifier split at its last linear layer: image -> ``(logits, features)``.

    ``head(body(x))`` is the original classifier's ``x -> logits``, computed once; ``features``
    ``[N, D]`` is what the head reads (its dropout is the identity in eval mode).
    """

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = clinical_argument(body)
        self.head = head

    def forward(
        self, image: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(image, clinical).float()
        return self.head(features).float(), features


class FusionFeatureClassifier(nn.Module):
    """A fusion classifier (``models.fusion.FusionClassifier``) as a detector:
    ``(image, clinical) -> (logits, IMAGE features)``. The features the gate compares are the
    image backbone's alone, so how familiar a photo looks does not depend on the form."""

    def __init__(self, fusion: nn.Module) -> None:
        super().__init__()
        self.fusion = fusion

    def forward(
        self, image: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.fusion.image_features(image)
        logits = self.fusion.head(features, self.fusion.clinical_features(image, clinical))
        return logits.float(), features.float()


def split_classifier(classifier: nn.Module) -> nn.Module:
    """Split any classifier (``ImageClassifier`` of a registered net) at its last ``nn.Linear``.

    The classifier is deep-copied; in the copy its last ``nn.Linear`` (in registration order,
    which for every registered net is the one that produces the logits) becomes ``nn.Identity``,
    so the copy yields the penultimate features and the removed layer is the head.
    :func:`check_split` verifies on real images that ``head(body(x))`` equals the classifier.

    Args:
        classifier: ``uint8 [N, H, W, 3] -> logits [N, C]``.

    Raises:
        ConfigError: the classifier has no ``nn.Linear`` (e.g. an exported TorchScript model).
    """
    if isinstance(classifier, FusionClassifier):
        return FusionFeatureClassifier(copy.deepcopy(classifier).eval()).eval()
    linears = [name for name, m in classifier.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"{type(classifier).__name__} has no nn.Linear layer to take penultimate features "
            "from: the mahalanobis score needs the trained network (a checkpoint), not an "
            "exported TorchScript model; choose --ood-score energy or msp, or --no-gate"
        )
    body = copy.deepcopy(classifier).eval()
    *parents, leaf = linears[-1].split(".")
    owner = body.get_submodule(".".join(parents)) if parents else body
    head = getattr(owner, leaf)
    setattr(owner, leaf, nn.Identity())
    return FeatureClassifier(body, head).eval()


@torch.no_grad()
def check_split(
    detector: nn.Module,
    classifier: nn.Module,
    images: torch.Tensor,
    clinical: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's ``(logits, features)`` of ``images``, checked against the classifier.

    Raises:
        ConfigError: the features are not ``[N, D]`` or the logits differ from the
            classifier's (the last linear layer is not the one giving the logits).
    """
    logits, features = detector(images, clinical)
    expected = clinical_argument(classifier)(images, clinical).float()
    if features.dim() != 2 or features.shape[0] != images.shape[0]:
        raise ConfigError(
            f"the classifier's last linear layer reads a {list(features.shape)} tensor, not "
            "[N, D] features: this network cannot be split for the mahalanobis score; choose "
            "--ood-score energy or msp"
        )
    if logits.shape != expected.shape or not torch.allclose(logits, expected, atol=1e-5):
        raise ConfigError(
            "the classifier's last linear layer is not the one that gives its logits (head of "
            "the split differs from the classifier): choose --ood-score energy or msp"
        )
    return logits, features


@dataclass(frozen=True)
class Gaussians:
    """Class-conditional Gaussians with one shared covariance, fitted on training features.

    Attributes:
        means: ``[K, D]`` means of the ``K`` classes that had images (float64).
        whitening: ``[D, D]`` lower Cholesky factor ``L`` of the precision, ``P = L L^T``.
        classes: the class index of each row of ``means``.
        shrinkage: Ledoit-Wolf weight of the scaled identity in the covariance, 0-1.
        images: feature vectors fitted on.
    """

    means: np.ndarray
    whitening: np.ndarray
    classes: tuple[int, ...]
    shrinkage: float
    images: int

    @property
    def precision(self) -> np.ndarray:
        return np.asarray(self.whitening @ self.whitening.T)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each feature vector to each class, ``[N, K]``
        (float64, the textbook ``(f - mu)^T P (f - mu)``; for checks, not for serving)."""
        diff = np.asarray(features, np.float64)[:, None, :] - self.means[None]
        return np.asarray(np.einsum("nkd,de,nke->nk", diff, self.precision, diff))


def fit_gaussians(
    features: np.ndarray, labels: np.ndarray, shrinkage: float | None = None
) -> Gaussians:
    """Fit :class:`Gaussians`: per-class means, pooled within-class covariance, shrunk.

    Args:
        features: ``[N, D]`` training features.
        labels: ``[N]`` class indices.
        shrinkage: weight of the scaled identity ``tr(S)/D * I`` in the covariance; None
            chooses it by Ledoit-Wolf (needed when ``N`` is not much larger than ``D``).

    Raises:
        DataError: fewer than two images, mismatched lengths, or constant features.
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(labels).astype(int)
    if x.ndim != 2 or len(x) != len(y):
        raise DataError(f"features {x.shape} and labels {y.shape} do not match")
    if len(x) < 2:
        raise DataError(f"{len(x)} training image(s): too few to fit the mahalanobis score")
    classes = tuple(int(c) for c in np.unique(y))
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    residuals = x - means[np.searchsorted(classes, y)]
    cov = residuals.T @ residuals / len(x)
    scale = float(np.trace(cov)) / x.shape[1]
    if not scale > 0:
        raise DataError(
            "the network's features are constant on the training images: an untrained or "
            "broken model cannot be gated by the mahalanobis score; choose --ood-score msp"
        )
    if shrinkage is None:
        from sklearn.covariance import ledoit_wolf_shrinkage

        shrinkage = float(ledoit_wolf_shrinkage(residuals, assume_centered=True))
    if not 0 <= shrinkage <= 1:
        raise ConfigError(f"shrinkage must be in [0, 1], got {shrinkage}")
    shrunk = (1 - shrinkage) * cov + (shrinkage + 1e-9) * scale * np.eye(x.shape[1])
    whitening = np.linalg.cholesky(np.linalg.inv(shrunk))
    return Gaussians(means, whitening, classes, float(shrinkage), len(x))


def colour_histogram(image: torch.Tensor, bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """``uint8 [N, H, W, 3]`` -> the square root of each image's joint RGB histogram,
    ``[N, bins**3]`` (each row sums to 1 before the root)."""
    q = torch.div(image.long() * bins, 256, rounding_mode="floor")
    index = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    flat = index.reshape(index.shape[0], -1)
    # Sizes and the pixel count stay symbolic, so a traced model takes any batch.
    counts = flat.new_zeros((flat.shape[0], bins**3), dtype=torch.float32)
    counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    return torch.sqrt(counts / counts.sum(dim=1, keepdim=True))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.where(norm > 0, norm, 1.0))


def knn_distance(bank: np.ndarray, x: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """``1 - cos`` to the ``k``-th nearest row of ``bank`` (both unnormalised), per row of x."""
    similarity = unit_rows(x) @ unit_rows(bank).T
    kth = np.sort(similarity, axis=1)[:, -min(k, bank.shape[0])]
    return np.asarray(1.0 - kth)


@dataclass
class Neighbours:
    """The ``knn`` score's reference: training images' features and colour histograms.

    Args:
        features: ``[M, D]`` penultimate features of training images.
        colours: ``[M, bins**3]`` their :func:`colour_histogram`.
        scales: the two distances' 99th percentiles on validation images (each distance is
            divided by its own, so neither space dominates).
        k: which neighbour's distance counts.
    """

    features: np.ndarray
    colours: np.ndarray
    scales: tuple[float, float] = (1.0, 1.0)
    k: int = KNN_K

    def distances(self, features: np.ndarray, colours: np.ndarray) -> np.ndarray:
        """``[N, 2]``: the unscaled cosine distances in the two spaces (numpy reference)."""
        return np.stack(
            [
                knn_distance(self.features, features, self.k),
                knn_distance(self.colours, colours, self.k),
            ],
            axis=1,
        )


class GatedModel(nn.Module):
    """``uint8 [N, H, W, 3]`` -> ``(probabilities [N, C], ood_score [N, 1])``: a gated version.

    The probabilities are ``ProbabilityModel``'s (``softmax(logits / temperature)``); the score
    is ``kind``'s (module doc), computed from the same forward pass.

    Args:
        detector: the classifier split by :func:`split_classifier`.
        kind: one of :data:`OOD_SCORES`.
        temperature: softmax temperature (also the energy's ``T``).
        gaussians: the fitted class Gaussians; required for ``mahalanobis``.
        classifier: a module giving the served logits when they are not the detector's (TTA,
            an ensemble); the score then still comes from ``detector``.

    Raises:
        ConfigError: unknown ``kind``, non-positive temperature, or mahalanobis without
            Gaussians.
    """

    def __init__(
        self,
        detector: FeatureClassifier,
        kind: str = DEFAULT_OOD_SCORE,
        temperature: float = 1.0,
        gaussians: Gaussians | None = None,
        classifier: nn.Module | None = None,
        neighbours: Neighbours | None = None,
    ) -> None:
        super().__init__()
        if kind not in OOD_SCORES:
            raise ConfigError(f"unknown OOD score {kind!r}; choose one of {', '.join(OOD_SCORES)}")
        if not temperature > 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        if kind == "mahalanobis" and gaussians is None:
            raise ConfigError("the mahalanobis score needs the fitted class Gaussians")
        if kind == "knn" and neighbours is None:
            raise ConfigError("the knn score needs the training images' neighbours")
        self.detector = detector
        self.kind = kind
        self.separate = classifier is not None
        self.classifier = clinical_argument(classifier) if classifier is not None else _Unused()
        self.register_buffer("temperature", torch.tensor(float(temperature)))

        def empty() -> torch.Tensor:  # one per buffer: a traced model cannot share tensors
            return torch.zeros(0, 0)

        means = torch.from_numpy(gaussians.means).float() if gaussians else empty()
        whitening = torch.from_numpy(gaussians.whitening).float() if gaussians else empty()
        self.register_buffer("means", means)
        self.register_buffer("whitening", whitening)
        # The class centres in the whitened space, once (not 7 x D x D multiply-adds a call).
        centers = (
            torch.from_numpy(gaussians.means @ gaussians.whitening).float()
            if gaussians
            else empty()
        )
        self.register_buffer("centers", centers)
        n = neighbours
        self.k = min(n.k, len(n.features)) if n is not None else KNN_K
        bank = torch.from_numpy(unit_rows(n.features)).float() if n is not None else empty()
        colours = torch.from_numpy(unit_rows(n.colours)).float() if n is not None else empty()
        self.register_buffer("bank", bank.t().contiguous())  # [D, M]: one product a batch
        self.register_buffer("colour_bank", colours.t().contiguous())
        scales = torch.tensor(n.scales if n is not None else (1.0, 1.0), dtype=torch.float32)
        self.register_buffer("scales", scales)

    def forward(
        self, image: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.serve(image, clinical)

    def serve(
        self, image: torch.Tensor, clinical: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.detector(image, clinical)
        served = self.classifier(image, clinical).float() if self.separate else logits
        probabilities = torch.softmax(served / self.temperature, dim=1)
        return probabilities, self._score(image, logits, features, probabilities)

    def _score(
        self,
        image: torch.Tensor,
        logits: torch.Tensor,
        features: torch.Tensor,
        probabilities: torch.Tensor,
    ) -> torch.Tensor:
        """The ``kind`` score ``[N, 1]`` from the detector's logits and features."""
        if self.kind == "mahalanobis":
            z = torch.matmul(features, self.whitening)
            distances = (z.unsqueeze(1) - self.centers.unsqueeze(0)).pow(2).sum(dim=2)
            score = distances.min(dim=1, keepdim=True).values
        elif self.kind == "knn":
            d_features = self._knn(features, self.bank)
            d_colours = self._knn(colour_histogram(image), self.colour_bank)
            score = torch.maximum(d_features / self.scales[0], d_colours / self.scales[1])
        elif self.kind == "energy":
            score = -self.temperature * torch.logsumexp(
                logits / self.temperature, dim=1, keepdim=True
            )
        else:
            score = -probabilities.max(dim=1, keepdim=True).values
        return score

    def _knn(self, x: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        unit = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        similarity = torch.matmul(unit, bank)
        kth = torch.topk(similarity, self.k, dim=1).values[:, self.k - 1 : self.k]
        return 1.0 - kth


class _Unused(nn.Module):
    """Stands in for the served classifier where the detector gives the served logits."""

    def forward(self, image: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        return image


# The buffers of a GatedModel: its temperature and score statistics (ExplainedGatedModel's too).
GATED_BUFFERS = ("temperature", "means", "whitening", "centers", "bank", "colour_bank", "scales")


class _WithoutMap(nn.Module):
    """A :class:`FeatureClassifier` as an explained model's detector: ``(logits, features,
    empty map)``; the map then comes from the explainer."""

    def __init__(self, detector: FeatureClassifier) -> None:
        super().__init__()
        self.detector = detector

    def forward(
        self, image: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, features = self.detector(image, clinical)
        return logits, features, logits[:, :0, None, None]


class _NoExplainer(nn.Module):
    """Stands in for the explainer where the detector gives the served logits and the map."""

    def forward(
        self, image: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        empty = torch.zeros(0)
        return empty, empty


class ExplainedGatedModel(GatedModel):
    """``uint8 [N, H, W, 3]`` -> ``(probabilities [N, C], ood_score [N, 1], cam [N, C, h, w])``:
    a gated version with the class activation map (``training.export.cam``).

    Built from the :class:`GatedModel` the gate's threshold was chosen with (its kind, its
    temperature and score statistics, the same probabilities and score) and an explainer
    (``uint8 -> (logits, cam)``, ``training.export.cam``):

    - a gated network (the gate's detector gives the served logits): ``explainer`` must be a
      ``CamLogits`` of the same network, whose ``CamClassifier`` then is the detector: logits,
      penultimate features and map in one pass (the features are the split's:
      ``models.cam.CamNetwork`` runs the network's own modules in its order).
    - TTA or an ensemble (served logits of their own): the gate's detector stays, and the
      explainer gives the served logits and the map instead of the gated model's classifier.

    Raises:
        ConfigError: a gated network without a ``CamLogits`` explainer.
    """

    def __init__(self, gated: GatedModel, explainer: nn.Module) -> None:
        nn.Module.__init__(self)  # the statistics are gated's, not fitted again
        self.kind = gated.kind
        self.k = gated.k
        self.separate = gated.separate
        for name in GATED_BUFFERS:
            self.register_buffer(name, getattr(gated, name).detach().clone())
        if gated.separate:
            self.detector: nn.Module = _WithoutMap(gated.detector)
            self.classifier: nn.Module = clinical_argument(explainer, pair=True)
        elif isinstance(explainer, CamLogits):
            self.detector = explainer.source
            self.classifier = _NoExplainer()
        else:
            raise ConfigError(
                f"a gated network's map comes from its own CamClassifier (CamLogits), not "
                f"{type(explainer).__name__}"
            )

    def forward(  # type: ignore[override]  # one output more than GatedModel's
        self, image: torch.Tensor, clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.serve(image, clinical)

    def serve(
        self, image: torch.Tensor, clinical: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, features, cam = self.detector(image, clinical)
        served = logits
        if self.separate:
            served, cam = self.classifier(image, clinical)
        probabilities = torch.softmax(served.float() / self.temperature, dim=1)
        return probabilities, self._score(image, logits, features, probabilities), cam


def choose_threshold(scores: np.ndarray, target: float) -> tuple[float, float, int]:
    """The score over which an image is refused, so that at most ``target`` of images like
    ``scores`` (the validation split's) are.

    The ``k``-th smallest score, ``k = ceil((n + 1) (1 - target))``: for a new image
    exchangeable with the ``n`` validation images, ``P(score > threshold) <= target`` (the
    split-conformal bound), and on the validation images themselves at most
    ``(n - k) / n < target`` are over it. With ``n < 1 / target - 1`` images, ``k > n``: the
    largest score is taken, and the bound does not hold.

    Returns:
        ``(threshold, validation_false_refusal, k)``.

    Raises:
        DataError: no scores, or non-finite ones.
    """
    s = np.sort(np.asarray(scores, np.float64).ravel())
    if not len(s) or not np.isfinite(s).all():
        raise DataError(f"cannot choose an OOD threshold from {len(s)} scores (empty or NaN)")
    if not 0 < target < 1:
        raise ConfigError(f"the target false-refusal rate must be in (0, 1), got {target}")
    k = min(int(np.ceil((len(s) + 1) * (1 - target) - 1e-9)), len(s))
    threshold = float(s[k - 1])
    return threshold, float(np.mean(s > threshold)), k


def refusal_upper_bound(refused: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound, at ``confidence``, of a refusal rate measured as
    ``refused`` of ``n`` images."""
    return 1.0 if refused >= n else float(beta.ppf(confidence, refused + 1, n - refused))


def allowed_refusals(n: int, target: float, confidence: float) -> int | None:
    """The most validation images of ``n`` a gate may refuse so that its false-refusal rate on
    new images is at most ``target`` with ``confidence``: the largest ``r`` whose
    :func:`refusal_upper_bound` is at most ``target``. None when even ``r = 0`` cannot show it
    (``n`` below about ``-ln(1 - confidence) / target``: 299 images for 1 % at 0.95).

    The split-conformal quantile (:func:`choose_threshold`) bounds the false-refusal rate only
    on AVERAGE over validation draws: a threshold chosen on one split refuses more than the
    target about half the time on new images, as the referral thresholds would without their
    bound (``training.evaluation.thresholds``).
    """
    if not 0 < target < 1 or not 0 < confidence < 1:
        raise ConfigError(f"target and confidence must be in (0, 1), got {target}, {confidence}")
    r = -1
    while r + 1 < n and refusal_upper_bound(r + 1, n, confidence) <= target:
        r += 1
    return r if r >= 0 else None


def gaussians_metadata(g: Gaussians) -> dict[str, Any]:
    """What ``gate.ood`` records of the fitted Gaussians."""
    return {
        "shrinkage": round(g.shrinkage, 6),
        "classes": len(g.classes),
        "missing_classes": NUM_CLASSES - len(g.classes),
    }
