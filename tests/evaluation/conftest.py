"""Fixtures for the evaluation tests."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # torch 2.14 marks TorchScript deprecated; Triton's PyTorch backend still needs it
    # (notes/triton-local.md), so the warning is expected here, not a defect.
    for item in items:
        if "tests/evaluation" in str(item.path):
            item.add_marker(pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning"))
