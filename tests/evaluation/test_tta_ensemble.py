import io

import pytest
import torch

from contracts.errors import ConfigError
from models.registry import create_classifier
from training.ensemble import Ensemble
from training.export import ProbabilityModel
from training.tta import TTA


def _model(seed: int) -> ProbabilityModel:
    torch.manual_seed(seed)
    return ProbabilityModel(create_classifier("compact_cnn", dropout=0.0).eval(), temperature=1.3)


def _roundtrip(module: torch.nn.Module) -> torch.jit.ScriptModule:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf)
    buf.seek(0)
    return torch.jit.load(buf)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(
        0, 256, (3, 36, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


@torch.no_grad()
def test_tta_equals_the_manual_average_eager_and_scripted(images):
    model = _model(0)
    manual = (
        model(images)
        + model(images.flip(2))  # mirror left-right
        + model(images.flip(1))  # upside down
        + model(torch.flip(images, [1, 2]))
    ) / 4
    tta = TTA(model, input_size=(36, 48))
    torch.testing.assert_close(tta(images), manual)
    torch.testing.assert_close(_roundtrip(tta)(images), manual)
    assert not torch.allclose(manual, model(images))  # the augmentations did change something


@torch.no_grad()
def test_rot90_only_on_square_images():
    with pytest.raises(ConfigError, match="non-square"):
        TTA(_model(0), ops=("identity", "rot90"), input_size=(112, 150))
    square = torch.randint(0, 256, (2, 40, 40, 3), dtype=torch.uint8)
    model = _model(0)
    tta = _roundtrip(TTA(model, ops=("identity", "rot90", "rot270"), input_size=(40, 40)))
    manual = (model(square) + model(square.rot90(1, [1, 2])) + model(square.rot90(3, [1, 2]))) / 3
    torch.testing.assert_close(tta(square), manual)
    with pytest.raises(torch.jit.Error, match="square"):
        tta(torch.randint(0, 256, (1, 36, 48, 3), dtype=torch.uint8))
    with pytest.raises(ConfigError, match="not valid"):
        TTA(model, ops=("transpose",))


@torch.no_grad()
def test_ensemble_is_the_weighted_mean_of_its_members(images):
    a, b = _model(1), _model(2)
    ensemble = Ensemble([torch.jit.script(a), torch.jit.script(b)], weights=[3, 1])
    expected = 0.75 * a(images) + 0.25 * b(images)
    torch.testing.assert_close(ensemble(images), expected)
    loaded = _roundtrip(ensemble)
    torch.testing.assert_close(loaded(images), expected)
    torch.testing.assert_close(loaded(images).sum(1), torch.ones(3))
    with pytest.raises(ConfigError, match="at least 2"):
        Ensemble([a])
