"""The gateway benchmark serves an exported fusion (two-input) version as it is: the direct
targets send the clinical input the gateway would send for an upload without metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.gateway_bench import run
from tests.factories import fusion_version

pytestmark = [pytest.mark.slow, pytest.mark.triton]


def test_direct_targets_load_a_fusion_version(real_lesions_dir: Path, tmp_path: Path) -> None:
    _, version = fusion_version(real_lesions_dir, tmp_path / "repo", (48, 64))
    res = run(
        concurrencies=(1,),
        requests=4,
        repeats=1,
        images_dir=real_lesions_dir,
        repository=version.parent,
        targets=("direct_tensor", "direct_decode"),
    )
    (level,) = res["levels"]
    assert res["input_size"] == [48, 64]
    for target in ("direct_tensor", "direct_decode"):
        assert level[target]["errors"] == 0 and level[target]["rps"] > 0, target
