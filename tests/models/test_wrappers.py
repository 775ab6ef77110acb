"""Preprocessing inside the model: uint8 NHWC in, normalised channels-last NCHW out."""

from __future__ import annotations

import pytest
import torch
from skimage import data

from models.registry import IMAGENET_MEAN, IMAGENET_STD
from models.wrappers import Preprocess


def test_preprocess_normalises_like_the_textbook_formula() -> None:
    x = torch.from_numpy(data.chelsea()[:40, :50].copy())[None]  # [1, 40, 50, 3] uint8
    out = Preprocess(IMAGENET_MEAN, IMAGENET_STD)(x)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = (x.permute(0, 3, 1, 2).double() / 255.0 - mean.double()) / std.double()
    assert out.shape == (1, 3, 40, 50) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


def test_preprocess_output_is_channels_last() -> None:
    x = torch.from_numpy(data.coffee()[:32, :48].copy())[None]
    out = Preprocess(IMAGENET_MEAN, IMAGENET_STD)(x)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(2, 16, 16, 3),  # float: already normalised by mistake
        torch.zeros(2, 3, 16, 16, dtype=torch.uint8),  # NCHW
        torch.zeros(16, 16, 3, dtype=torch.uint8),  # one image without a batch axis
    ],
)
def test_preprocess_rejects_anything_but_uint8_nhwc(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"takes uint8 RGB images \[N, H, W, 3\]"):
        Preprocess(IMAGENET_MEAN, IMAGENET_STD)(bad)


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("error::torch.jit.TracerWarning")
def test_trace_bakes_in_no_input_check() -> None:
    """The eager-only input check must not turn into a constant branch under tracing."""
    from models.registry import create_classifier

    model = create_classifier("compact_cnn").eval()
    x = torch.from_numpy(data.chelsea()[:64, :64].copy())[None]
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), model(x), atol=1e-5, rtol=0)
