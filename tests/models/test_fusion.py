"""The fusion network (``models.fusion``): image and clinical metadata in, one linear head, the
class activation map still averaging to the logit, and the gate's features the image's alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contracts import clinical
from contracts.errors import ConfigError
from models.cam import CamClassifier, check_cam
from models.fusion import FusionClassifier, uses_clinical
from models.registry import create_classifier
from models.wrappers import ImageClassifier

SIZE = (48, 64)


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *SIZE, 3), dtype=torch.uint8, generator=g)


def _rows() -> torch.Tensor:
    return torch.from_numpy(
        clinical.encode_batch(
            [80, 25, None, 55],
            ["male", "female", "unknown", "male"],
            ["scalp", "back", "x", "face"],
        )
    )


def _fusion(name: str = "compact_cnn", seed: int = 0) -> FusionClassifier:
    torch.manual_seed(seed)
    model = create_classifier(name, clinical=True).eval()
    assert isinstance(model, FusionClassifier)
    return model


@pytest.mark.parametrize("name", ["compact_cnn", "efficientnet_lite0", "resnet18"])
def test_forward_shapes_and_the_clinical_input_changes_the_logits(name):
    model = _fusion(name)
    x, rows = _images(), _rows()
    with torch.no_grad():
        logits = model(x, rows)
        assert logits.shape == (4, 7) and logits.dtype == torch.float32
        other = rows.clone()
        other[:, 0] = 1.0 - other[:, 0]  # other ages, all known
        other[:, 1] = 1.0
        changed = model(x, other)
        # None is every field unknown: the UNKNOWN vector, not an error.
        unknown = model(x, torch.from_numpy(np.tile(clinical.UNKNOWN, (4, 1))))
        torch.testing.assert_close(model(x), unknown)
    assert (logits - changed).abs().max() > 1e-4
    assert (logits - unknown).abs().max() > 1e-4
    assert uses_clinical(model) and not uses_clinical(create_classifier("compact_cnn"))


def test_image_only_models_are_untouched():
    torch.manual_seed(0)
    plain = create_classifier("compact_cnn").eval()
    assert isinstance(plain, ImageClassifier)
    x = _images()
    with torch.no_grad():
        # The clinical argument every wrapper passes is ignored by an image-only network.
        torch.testing.assert_close(plain(x), plain(x, _rows()))
    assert "classifier.weight" in {k.removeprefix("net.") for k in plain.state_dict()}


def test_a_network_without_a_plain_head_cannot_fuse():
    with pytest.raises(ConfigError, match="cannot be fused"):
        create_classifier("mobilenet_v3_small", clinical=True)


def test_the_fusion_map_averages_to_the_logit_and_its_features_are_the_image_s():
    model = _fusion("compact_cnn")
    cam_model = CamClassifier(model).eval()
    x, rows = _images(), _rows()
    logit_diff, mean_diff = check_cam(cam_model, x, model, rows)
    assert logit_diff is not None and logit_diff <= 1e-5 and mean_diff <= 1e-5
    with torch.no_grad():
        logits, features, cam = cam_model(x, rows)
        _, features_other, cam_other = cam_model(x, torch.zeros_like(rows))
    assert cam.shape[:2] == (4, 7) and cam.shape[2:] == (3, 4)
    # The map's mean over the grid is the fused logit (image part + clinical part + bias).
    torch.testing.assert_close(cam.mean(dim=(2, 3)), logits, atol=1e-5, rtol=1e-5)
    # The features (what the out-of-distribution gate reads) are the image's alone...
    torch.testing.assert_close(features, features_other)
    torch.testing.assert_close(features, model.image_features(x))
    # ...while the map moves with the form by the same amount in every cell.
    shift = cam - cam_other
    assert shift.abs().max() > 1e-4
    torch.testing.assert_close(shift, shift[:, :, :1, :1].expand_as(shift))


def test_a_wrong_clinical_split_fails_the_map_check():
    model = _fusion("compact_cnn")
    cam_model = CamClassifier(model).eval()
    x, rows = _images(), _rows()
    with torch.no_grad():
        model.classifier.bias += 1.0  # the map was built on the same module: still consistent
    check_cam(cam_model, x, model, rows)
    with pytest.raises(ConfigError, match="other logits"):
        # The classifier run with other rows than the map: its logits are not the map's.
        check_cam(cam_model, x, _Shuffled(model).eval(), rows)


class _Shuffled(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        assert clinical is not None
        return self.model(image, clinical.flip(0))
