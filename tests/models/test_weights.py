"""Weights: the shipped ImageNet weights are real, and weight files load strictly or not at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from skimage import data

import models
from contracts.errors import ConfigError
from contracts.images import eval_resize
from models import efficientnet
from models.registry import IMAGENET_MEAN, IMAGENET_STD
from models.wrappers import ImageClassifier

# ImageNet indices: 281 tabby, 282 tiger cat, 283 Persian, 284 Siamese, 285 Egyptian cat;
# 967 espresso, 968 cup, 504 coffee mug.
CATS = {281, 282, 283, 284, 285}
COFFEE = {967, 968, 504}


@pytest.fixture(scope="module", params=efficientnet.VARIANTS)
def imagenet_classifier(request: pytest.FixtureRequest) -> ImageClassifier:
    net = efficientnet.imagenet_model(variant=request.param)
    return ImageClassifier(net, IMAGENET_MEAN, IMAGENET_STD).eval()


@pytest.mark.parametrize("size", [(224, 224), models.get_spec("efficientnet_lite0").input_size])
def test_shipped_efficientnet_weights_recognise_photos(
    imagenet_classifier: ImageClassifier, size: tuple[int, int]
) -> None:
    """Lite0, Lite1 and Lite2: each package's weights recognise a cat and a cup of coffee."""
    x = torch.from_numpy(
        np.stack([eval_resize(data.chelsea(), size), eval_resize(data.coffee(), size)])
    )
    with torch.no_grad():
        probs = imagenet_classifier(x).softmax(dim=1)
    top = probs.argmax(dim=1).tolist()
    assert top[0] in CATS, f"chelsea (a cat) classified as ImageNet class {top[0]}"
    assert top[1] in COFFEE, f"coffee classified as ImageNet class {top[1]}"
    assert probs[0, sorted(CATS)].sum() > 0.5 and probs[1, sorted(COFFEE)].sum() > 0.5


@pytest.mark.parametrize("variant", efficientnet.VARIANTS[1:])
def test_lite1_and_lite2_are_not_lite0(variant: str) -> None:
    """Each variant loads its own package's tensors (386 of them), not Lite0's 296."""
    net = models.create(variant, num_classes=7, pretrained=True)
    assert len(net.state_dict()) == 386
    shipped = torch.load(efficientnet.shipped_weights_path(variant), weights_only=True)
    assert torch.equal(net.state_dict()["conv_stem.weight"], shipped["_conv_stem.weight"])
    lite0 = efficientnet.imagenet_model().state_dict()
    assert not torch.equal(net.state_dict()["conv_stem.weight"], lite0["conv_stem.weight"])


def test_random_efficientnet_does_not_recognise_photos() -> None:
    """The control: the test above fails without the weights."""
    torch.manual_seed(0)
    net = efficientnet.imagenet_model(pretrained=False)
    model = ImageClassifier(net, IMAGENET_MEAN, IMAGENET_STD).eval()
    x = torch.from_numpy(eval_resize(data.chelsea(), (224, 224)))[None]
    with torch.no_grad():
        assert model(x).softmax(dim=1)[0, sorted(CATS)].sum() < 0.1


def test_pretrained_efficientnet_keeps_backbone_and_gets_a_new_head() -> None:
    imagenet = efficientnet.imagenet_model().state_dict()
    net = models.create("efficientnet_lite0", num_classes=7, dropout=0.3, pretrained=True)
    state = net.state_dict()
    assert state["classifier.weight"].shape == (7, 1280)
    assert net.drop_rate == 0.3
    for key, value in state.items():
        if not key.startswith("classifier."):
            assert torch.equal(value, imagenet[key]), key


def test_efficientnet_loads_its_own_state_dict_by_position(tmp_path: Path) -> None:
    path = tmp_path / "lite0.pth"
    torch.save(efficientnet.imagenet_model().state_dict(), path)  # timm naming this time
    net = models.create("efficientnet_lite0", weights_path=str(path))
    shipped = models.create("efficientnet_lite0", pretrained=True)
    assert torch.equal(
        net.state_dict()["conv_head.weight"], shipped.state_dict()["conv_head.weight"]
    )


def test_efficientnet_rejects_weights_of_another_network(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, path)
    with pytest.raises(
        ConfigError, match=f"holds {len(state)} tensors but efficientnet_lite0 has 296"
    ):
        models.create("efficientnet_lite0", weights_path=str(path))


def test_efficientnet_rejects_tensors_swapped_in_place(tmp_path: Path) -> None:
    # Same count and shapes, two positions swapped: only the per-position check catches it.
    items = list(efficientnet.imagenet_model().state_dict().items())
    items[1], items[2] = items[2], items[1]  # bn1.weight <-> bn1.bias, both [32]
    path = tmp_path / "swapped.pth"
    torch.save(dict(items), path)
    with pytest.raises(ConfigError, match=r"at 2 positions.*#1 bn1\.bias"):
        models.create("efficientnet_lite0", weights_path=str(path))


def test_torchvision_weights_path_loads_before_the_head_is_replaced(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = torchvision.models.mobilenet_v3_small()
    path = tmp_path / "mnv3.pth"
    torch.save(source.state_dict(), path)
    net = models.create("mobilenet_v3_small", num_classes=7, dropout=0.4, weights_path=str(path))
    assert torch.equal(net.features[0][0].weight, source.features[0][0].weight)
    assert net.classifier[3].out_features == 7 and net.classifier[2].p == 0.4


def test_torchvision_weights_path_must_fit(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    with pytest.raises(ConfigError, match=r"missing keys.*unexpected keys.*torchvision's resnet18"):
        models.create("resnet18", weights_path=str(path))
    # Same keys, wrong shapes: a 7-class head instead of ImageNet's.
    torch.save(torchvision.models.resnet18(num_classes=7).state_dict(), path)
    with pytest.raises(ConfigError, match=r"2 misshapen tensors \(e\.g\. fc\.weight \(7, 512\)"):
        models.create("resnet18", weights_path=str(path))


def test_compact_weights_path_round_trips(tmp_path: Path) -> None:
    trained = models.create("compact_cnn", num_classes=7)
    path = tmp_path / "compact.pth"
    torch.save(trained.state_dict(), path)
    again = models.create("compact_cnn", num_classes=7, weights_path=str(path))
    for key, value in trained.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    with pytest.raises(ConfigError, match="compact_cnn with num_classes=3"):
        models.create("compact_cnn", num_classes=3, weights_path=str(path))


def test_bad_weight_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        models.create("resnet18", weights_path=str(tmp_path / "nope.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read as PyTorch weights"):
        models.create("resnet18", weights_path=str(junk))
    whole = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], whole)
    with pytest.raises(ConfigError, match="is not a state dict"):
        models.create("resnet18", weights_path=str(whole))
