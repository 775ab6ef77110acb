"""The class activation map of every registered network that ends in global average pooling and
one linear layer (``models.cam``): the network's own logits, a map whose grid mean is the
logit, scriptable; the others say they have none."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from contracts.errors import ConfigError
from models import create_classifier
from models.cam import CamClassifier, CamUnsupported, check_cam, class_activation_map

SIZE = (64, 96)
# Each network's grid at SIZE: compact_cnn's stride is 16, the others' 32.
GRIDS = {
    "compact_cnn": (4, 6),
    "efficientnet_lite0": (2, 3),
    "efficientnet_lite1": (2, 3),
    "efficientnet_lite2": (2, 3),
    "resnet18": (2, 3),
    "resnet50": (2, 3),
}


def _images(n: int = 3) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy((rng.random((n, *SIZE, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_the_map_belongs_to_the_network(name):
    torch.manual_seed(0)
    classifier = create_classifier(name, 7, dropout=0.3).eval()
    model = CamClassifier(classifier).eval()
    x = _images()
    with torch.no_grad():
        logits, features, cam = model(x)
        expected = classifier(x)
    assert cam.shape == (3, 7, *GRIDS[name]) and cam.dtype == torch.float32
    assert features.shape[0] == 3 and features.dim() == 2
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)  # the same operations
    torch.testing.assert_close(cam.mean(dim=(2, 3)), logits, atol=1e-4, rtol=1e-4)
    logit_diff, mean_diff = check_cam(model, x, classifier)
    assert logit_diff is not None and logit_diff <= 1e-5 and mean_diff <= 1e-4
    # It shares the classifier's modules: no copy of the weights.
    assert model.preprocess is classifier.preprocess and model.network.net is classifier.net
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model)
        with torch.no_grad():
            script_cam = scripted(x)[2]
    assert (script_cam - cam).abs().max() <= 1e-5 * max(1.0, float(cam.abs().max()))


def test_the_map_is_the_classes_weights_on_the_feature_map():
    torch.manual_seed(0)
    fmap = torch.rand(2, 5, 3, 4)
    weight, bias = torch.randn(7, 5), torch.randn(7)
    cam = class_activation_map(fmap, weight, bias)
    expected = torch.einsum("ck,nkhw->nchw", weight, fmap) + bias[None, :, None, None]
    torch.testing.assert_close(cam, expected)
    # Global average pooling then the linear layer: the map's mean.
    torch.testing.assert_close(cam.mean(dim=(2, 3)), fmap.mean(dim=(2, 3)) @ weight.T + bias)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_a_head_with_a_hidden_layer_has_no_map(name):
    with pytest.raises(CamUnsupported, match="one linear layer"):
        CamClassifier(create_classifier(name, 7))


def test_only_a_network_with_its_preprocessing_is_split():
    classifier = create_classifier("compact_cnn", 7)
    with pytest.raises(CamUnsupported, match="ImageClassifier"):
        CamClassifier(classifier.net)
    assert issubclass(CamUnsupported, ConfigError)


def test_the_check_needs_eval_mode_and_catches_a_wrong_split():
    classifier = create_classifier("compact_cnn", 7).eval()
    model = CamClassifier(classifier)
    with pytest.raises(ConfigError, match="eval mode"):
        check_cam(model.train(), _images(), classifier)
    other = create_classifier("compact_cnn", 7).eval()
    with pytest.raises(ConfigError, match="other logits"):
        check_cam(model.eval(), _images(), other)
